"""Which trigger-search objective finds a full-image backdoor? One universal additive pattern
delta (||delta||_inf <= eps), optimised by signed gradient ascent on the teacher, on DHBE's
synthetic images (G at the end of DHBE_RUN) or on test images, under two objectives:

  l1        mean |T(x + delta) - T(x)|, DHBE's R (what G_p maximises);
  collapse  -H(mean over the batch of softmax T(x + delta)): one pattern that sends the whole
            batch to one class, whatever the class (the backdoor's signature; needs no label).

  PYTHONPATH=. python experiments/scripts/dhbe_gp_objective_probe.py TEACHER_RUN DHBE_RUN [EPS] [STEPS] [K]

With K (1..H), delta is restricted to low spatial frequencies: delta = eps * tanh(IDCT(theta)) with
only theta's K x K lowest DCT coefficients per channel free (Adam on theta); without K, delta is
any pattern in the eps-ball (signed gradient steps of eps/20, clipped).

Prints, per objective and image source: the class delta sends most images to and its share, the
share sent to the attack's real target, and the cosine similarity between delta and the real
trigger's additive change on a mid-grey image (1 = the real trigger's pattern). A probe for
docs/results_cifar10.md (2026-11-29), not library code.
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
from dhbe_jax.step import _Forward, init_state
from experiments.defenses.common import load_attack_run

run = load_attack_run(Path(sys.argv[1]).expanduser())
dhbe_dir = Path(sys.argv[2]).expanduser()
eps = float(sys.argv[3]) if len(sys.argv) > 3 else 20 / 255
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 200
lowpass = int(sys.argv[5]) if len(sys.argv) > 5 else None
settings = json.loads((dhbe_dir / "record.json").read_text())["config"]["defense"]["dhbe"]
fields = {f.name for f in dataclasses.fields(DHBEConfig)}
config = DHBEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields})
mesh = make_mesh()
players, _ = compiled_iteration(run.spec, config, mesh)
checkpoints = TrainCheckpoints(dhbe_dir / "checkpoints")
state = checkpoints.restore(init_state(players, run.variables, config, jax.random.PRNGKey(0)))
checkpoints.close()
f = _Forward(players, config, tuple(run.spec.image_shape), mesh)
target = int(run.attack.target)
grey = jnp.full((1, *run.spec.image_shape), 0.5, jnp.float32)
real_pattern = (run.trigger(grey) - grey)[0]


def logits(x):
    return run.module.apply(run.variables, x, train=False)


def objective(name, delta, x, clean):
    out = logits(jnp.clip(x + delta, 0.0, 1.0))
    if name == "l1":
        return jnp.mean(jnp.abs(out - clean))
    p = jax.nn.softmax(out).mean(0)
    return jnp.sum(p * jnp.log(p + 1e-12))


def lowpass_delta(theta):
    """eps * tanh(IDCT over H, W of theta [H, W, C] with only its lowpass x lowpass corner kept)."""
    h, w, _ = theta.shape
    mask = (jnp.arange(h)[:, None, None] < lowpass) & (jnp.arange(w)[None, :, None] < lowpass)
    return eps * jnp.tanh(jax.scipy.fft.idctn(theta * mask, axes=(0, 1), norm="ortho"))


def search(name, x):
    clean = logits(x)
    if lowpass is None:
        grad = jax.jit(jax.grad(lambda d: objective(name, d, x, clean)))
        delta = jnp.zeros(x.shape[1:], jnp.float32)
        for _ in range(steps):
            delta = jnp.clip(delta + eps / 20 * jnp.sign(grad(delta)), -eps, eps)
    else:
        import optax

        tx = optax.adam(0.05)
        theta = jnp.zeros(x.shape[1:], jnp.float32)
        opt = tx.init(theta)
        grad = jax.jit(jax.grad(lambda t: -objective(name, lowpass_delta(t), x, clean)))
        for _ in range(steps):
            updates, opt = tx.update(grad(theta), opt)
            theta = optax.apply_updates(theta, updates)
        delta = lowpass_delta(theta)
    preds = np.asarray(logits(jnp.clip(x + delta, 0.0, 1.0)).argmax(-1))
    top = np.bincount(preds, minlength=clean.shape[-1])
    cos = float(jnp.vdot(delta, real_pattern) / (jnp.linalg.norm(delta) * jnp.linalg.norm(real_pattern) + 1e-12))
    return (f"top class {top.argmax()} ({top.max() / len(preds):.2f})  to target {target}: "
            f"{(preds == target).mean():.2f}  cosine with the real trigger {cos:+.2f}")


synthetic = jnp.concatenate([f.synthesize(state.generator, jax.random.PRNGKey(100 + b)) for b in range(4)])
test = run.triggered.clean_images
pick = np.random.default_rng(0).choice(len(test), len(synthetic), replace=False)
sources = {"G's images": synthetic, "test images": jnp.asarray(test[pick], jnp.float32) / 255.0}
print(f"{run.attack.name}: eps {eps:.4f}, {steps} steps, {len(synthetic)} images per source, "
      f"{'any pattern' if lowpass is None else f'{lowpass} x {lowpass} lowest DCT frequencies'}")
for source, x in sources.items():
    for name in ("l1", "collapse"):
        print(f"  {source:11s} {name:8s} {search(name, x)}")
