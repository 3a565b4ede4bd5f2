"""Does DHBE's game ever see the real backdoor? The attack's own trigger and G_p's generated
triggers, measured on G's synthetic images and on real test images, for the teacher and for
DHBE's final student.

  PYTHONPATH=. python experiments/scripts/dhbe_trigger_probe.py TEACHER_RUN DHBE_RUN [BATCHES]

For each model (teacher, student) and each input source (G's images at the end of the run; the
test images whose class is not the target) it prints:
  target share   how often the model predicts the attack's target class on the images as they are
                 and with the real trigger added;
  R(real)        mean absolute change of the logits the real trigger causes, L1 as in DHBE's R;
  R(patch), R(full)  the same for G_p's two trigger families (DHBE_RUN's final trigger generator).
If the teacher's R(real) on G's images is far below its R(real) on test images, or below the
generated triggers' R, the restriction term never pushes the student where the backdoor is.
Used for the SIG and WaNet findings of docs/results_cifar10.md (2026-11-29).
"""
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from backdoor_core.checkpoint import TrainCheckpoints
from backdoor_core.sharding import make_mesh
from dhbe_jax import DHBEConfig
from dhbe_jax.erase import compiled_iteration
from dhbe_jax.losses import l1_logits
from dhbe_jax.step import _Forward, init_state
from experiments.defenses.common import load_attack_run

teacher_run = load_attack_run(Path(sys.argv[1]).expanduser())
dhbe_dir = Path(sys.argv[2]).expanduser()
batches = int(sys.argv[3]) if len(sys.argv) > 3 else 4
settings = json.loads((dhbe_dir / "record.json").read_text())["config"]["defense"]["dhbe"]
fields = {f.name for f in dataclasses.fields(DHBEConfig)}
config = DHBEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields})
mesh = make_mesh()
players, _ = compiled_iteration(teacher_run.spec, config, mesh)
like = init_state(players, teacher_run.variables, config, jax.random.PRNGKey(0))
checkpoints = TrainCheckpoints(dhbe_dir / "checkpoints")
state = checkpoints.restore(like)
checkpoints.close()
print(f"DHBE state at iteration {int(state.iteration)} of {config.iterations}; families {config.trigger_families}")
f = _Forward(players, config, tuple(teacher_run.spec.image_shape), mesh)
target = int(teacher_run.attack.target)
models = {"teacher": teacher_run.variables, "student": state.student}


def logits(variables, x):
    return teacher_run.module.apply(variables, x, train=False)


def measure(x, key):
    """{model: {stat: value}} on images x [B, H, W, C] in [0, 1]."""
    real = teacher_run.trigger(x, key)
    generated = f.triggered(state.trigger, key, x)
    out = {}
    for name, variables in models.items():
        clean, trig = logits(variables, x), logits(variables, real)
        row = {"target share": float(jnp.mean(clean.argmax(-1) == target)),
               "target share, real trigger": float(jnp.mean(trig.argmax(-1) == target)),
               "R(real)": float(l1_logits(trig, clean))}
        for family, xp in zip(config.trigger_families, generated):
            row[f"R({family})"] = float(l1_logits(logits(variables, xp), clean))
            row[f"target share, {family}"] = float(jnp.mean(logits(variables, xp).argmax(-1) == target))
        out[name] = row
    return out


def average(rows):
    return {m: {k: float(np.mean([r[m][k] for r in rows])) for k in rows[0][m]} for m in rows[0]}


synthetic = [measure(f.synthesize(state.generator, jax.random.PRNGKey(100 + b)), jax.random.PRNGKey(b))
             for b in range(batches)]
test_images = teacher_run.triggered.clean_images
pick = np.random.default_rng(0).choice(len(test_images), config.batch_size * batches, replace=False)
real = [measure(jnp.asarray(test_images[pick[b::batches]], jnp.float32) / 255.0, jax.random.PRNGKey(b))
        for b in range(batches)]
for source, rows in (("G's synthetic images", synthetic), ("test images (not of the target class)", real)):
    print(f"\n{source}, {batches} batches of {config.batch_size}:")
    for model, stats in average(rows).items():
        print(f"  {model:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in stats.items()))
