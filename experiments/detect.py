"""Backdoor detection (`pbe_jax.detect`) on any number of finished run directories, as one table.

  python -m experiments.detect --runs ~/runs/attack_cifar10_badnets ~/runs/clean_cifar10 \
      [--eps 6 [16 32 ...]] [--norm linf|l2] [--steps 7] [--num_images 500] [--images test|synthetic|noise] [--synthetic_steps 200]
      [--threshold 0.5] [--reference RUN [RUN ...]] [--out docs/detection.md] [--num_devices N]

For each run (clean training, attack or defense run) the model is loaded, `num_images` images
are drawn (seeded) and used unlabelled, and untargeted PGD (PBE's eps 6/255, 7 steps) is run
against the model's own predictions. The images (`--images`): `test`, its dataset's test
images; `synthetic`, no data at all: DHBE's sample generator fitted to the model alone for
`--synthetic_steps` steps (`dhbe_jax.synthesize`: class balance + confidence of the model's
predictions); `noise`, uniform random pixels (a data-free reference). The table lists the suspected
target class (argmax of the adversarial predictions), the concentration (share of flipped images
that land in it), the normalised entropy, the flip rate, the verdict `concentration >=
threshold`, the most predicted class of the unattacked images and its share (`input_top`: on noise or
synthetic images a backdoor can show before any attack), and, for attack runs, the true target
(`y+1` for all-to-all) and `target_share`, the share of the flipped images that land on the
backdoor's target for their prediction before the attack (all-to-one: the target's share; all-to-all:
the share that goes from each class i to i + 1, which the suspected class cannot show).
Ground truth is only printed, never used.
`--reference RUN [RUN ...]` names models believed clean, trained on the same data: each is attacked
the same way at each budget, and every row gains `reference_share`, the largest of the references'
shares of their flips that land on the row's suspected class, and `excess`, the concentration minus
that share; and `shift_class` / `shift`, the class whose share of the row's flips exceeds every
reference's share of it the most, and by how much. A dataset can have a sink of its own that every
model's adversarial examples pile into (MNIST's class 8: four clean small CNNs' concentration there
is 0.44-0.63 at 76/255, two BadNets teachers' 0.45 and 0.53; `docs/pbe.md`, "Full MNIST"): the excess tells a
backdoor's target from it, and the shift looks past it for a class the references do not favour.
Several references take the largest share, since clean models differ in where their flips go; a
reference also listed in `--runs` is compared with the other references only (leave one out: how far
one clean model stands out from the others), and with no other reference its columns are '-'.
References of different datasets are refused; a run of another dataset than theirs is an error row. The
verdict stays on the concentration; none of these columns is calibrated into one (docs/pbe.md).
`--norm l2` attacks an L2 ball instead (`--eps` then per image, in [0, 1]-pixel units; the table's
eps reads 'L2 1'): it can spend its budget on the few pixels of a patch, which an L-inf ball cannot
(it did not find the 3x3 patches of MNIST and CIFAR-10 either: docs/pbe.md).
Several `--eps` values give one row per run and budget (each model and its test set loaded once):
the concentration of a backdoored model's adversarial examples can grow with the budget while a
clean model's does not (`docs/results_cifar10.md`, "Detection").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from backdoor_core import rundir
from backdoor_core.data import load_dataset
from backdoor_core.errors import InputError
from backdoor_core.sharding import make_mesh
from dhbe_jax.synthesize import SYNTHESIS_STEPS, synthesize
from experiments.common import attack_label, output_dir, table_path
from experiments.table import markdown

COLUMNS = ("run", "images", "eps", "kind", "attack", "true_target", "suspected", "concentration", "entropy", "flip_rate",
           "backdoored_verdict", "input_top", "target_share", "seconds")
REFERENCE_COLUMNS = ("reference_share", "excess", "shift_class", "shift")


IMAGES = ("test", "synthetic", "noise")
NORMS = ("linf", "l2")


def pgd_config(eps: float, norm: str, steps: int):
    """The untargeted PGD of one detection budget: `eps` in 1/255 units for norm 'linf' (PBE's 6)
    or in [0, 1]-pixel units per image for 'l2'; step eps/5 (PBE's 1.2/255 for 6/255), `steps` steps."""
    from attacks.pgd import PGDConfig

    radius = eps / 255 if norm == "linf" else eps
    return PGDConfig(eps=radius, alpha=radius / 5, steps=steps, norm=norm)


def budget_label(eps: float, norm: str) -> str:
    """The table's `eps` entry of a budget: '6' for L-inf 6/255 (as before --norm existed), 'L2 1'
    for an L2 ball of radius 1."""
    return f"{eps:g}" if norm == "linf" else f"L2 {eps:g}"


def detection_images(run_dir: Path, record: dict, spec, variables, kind: str, num_images: int, seed: int,
                     synthetic_steps: int, mesh) -> np.ndarray:
    """The images detection attacks for the model of `run_dir`: [N, H, W, C], uint8 (`test`: all
    of its dataset's test images, `detect` samples num_images of them) or float32 in [0, 1]
    (`synthetic`: num_images from `dhbe_jax.synthesize` after synthetic_steps generator steps;
    `noise`: num_images of uniform pixels), seeded by `seed`."""
    if kind == "test":
        source = record.get("dataset_source") or record.get("dataset")
        if not source:
            raise InputError(f"{run_dir}/record.json names no dataset_source; expected a training, attack or defense run")
        return load_dataset(source)[1].images
    if kind == "noise":
        return np.random.default_rng(seed).random((num_images, *spec.image_shape), dtype=np.float32)
    images, _ = synthesize(spec, variables, num_images, jax.random.PRNGKey(seed), steps=synthetic_steps, mesh=mesh)
    return images


def detect_run(run_dir: Path, configs: dict[str, object], mesh, images: str = "test",
               synthetic_steps: int = SYNTHESIS_STEPS, record: dict | None = None) -> list[dict]:
    """Table rows for the model saved in `run_dir` on the images named by `images` (one of
    IMAGES, see `detection_images`), one per entry budget label (`budget_label`) -> DetectConfig
    of `configs`, in that order. `record`: the run's record.json if the caller has read it."""
    from pbe_jax import detect

    record = record if record is not None else rundir.read_record(run_dir)
    spec, module, variables = rundir.load_model(run_dir)
    first = next(iter(configs.values()))
    inputs = detection_images(run_dir, record, spec, variables, images, first.num_images, first.seed,
                              synthetic_steps, mesh)
    attack = record.get("attack") or {}
    all_to_all = attack.get("mode", "all_to_one") == "all_to_all"
    ids = {"run": run_dir.name, "dataset": record.get("dataset", "-"), "images": images,
           "kind": record.get("kind", "train"), "attack": attack_label(attack),
           "true_target": ("y+1" if all_to_all else attack.get("target", "-")) if attack else "-"}
    rows = []
    for label, config in configs.items():
        start = time.perf_counter()
        result = detect(module, variables, inputs, config, mesh=mesh)
        rows.append({**ids, "eps": label, "suspected": result.suspected_target,
                     "concentration": round(result.concentration, 4), "entropy": round(result.normalized_entropy, 4),
                     "flip_rate": round(result.flip_rate, 4), "seconds": round(time.perf_counter() - start, 1),
                     "counts": [int(c) for c in result.counts], "input_counts": [int(c) for c in result.input_counts],
                     "transitions": result.transitions.tolist(), "input_top": input_top(result.input_counts),
                     "target_share": target_share(result.transitions, attack)})
    return rows


def target_share(transitions: np.ndarray, attack: dict) -> float | str:
    """Share of the flipped images [K, K] (`Detection.transitions`) that land on the backdoor's
    target for their prediction before the attack, from an attack record's `attack` entry (mode,
    target); '-' for a run without an attack or without flips. Ground truth: printed, never used."""
    transitions = np.asarray(transitions)
    total, num_classes = transitions.sum(), len(transitions)
    if not attack or total == 0:
        return "-"
    from attacks.base import AttackConfig, poison_target

    before = np.arange(num_classes)
    hits = transitions[before, poison_target(before, AttackConfig.from_dict(attack), num_classes)].sum()
    return round(float(hits / total), 4)


def with_reference(row: dict, references: list[dict]) -> dict:
    """`row` (a detection row) with the columns of REFERENCE_COLUMNS against `references` (the
    reference models' rows at the same budget). With shares s_j[c] of reference j's flips landing on
    class c and the row's own shares p[c], the envelope S[c] = max_j s_j[c] (a class that is a sink
    for any clean model is not held against the row):
      reference_share: S[suspected]; excess: concentration - S[suspected];
      shift_class: argmax_c p[c] - S[c], the class this model's flips favour most beyond every
        reference's; shift: that largest p[c] - S[c].
    All '-' for an error row, no reference, a reference that flipped nothing or one with another
    number of classes."""
    if "error" in row:
        return row
    counts = [np.asarray(reference["counts"]) for reference in references]
    if not counts or any(c.sum() == 0 or len(c) != len(row["counts"]) for c in counts):
        return {**row, **dict.fromkeys(REFERENCE_COLUMNS, "-")}
    envelope = np.max([c / c.sum() for c in counts], axis=0)
    own = np.asarray(row["counts"]) / max(sum(row["counts"]), 1)
    gap = own - envelope
    shifted = int(np.argmax(gap))
    share = float(envelope[row["suspected"]])
    return {**row, "reference_share": round(share, 4),
            "excess": round(row["concentration"] - share, 4) + 0.0,  # + 0.0: no "-0.0" in the table
            "shift_class": shifted, "shift": round(float(gap[shifted]), 4) + 0.0}


def input_top(input_counts) -> str:
    """'class (share)' of the most predicted class among the unattacked images, e.g. '0 (1.00)'."""
    counts = np.asarray(input_counts)
    return f"{int(counts.argmax())} ({counts.max() / max(counts.sum(), 1):.2f})"


def markdown_table(rows: list[dict], threshold: float, reference: bool = False) -> str:
    """The rows as a Markdown table, with the verdict `concentration >= threshold` (and the
    reference columns if `reference`)."""
    shown = [{"run": r["run"], "kind": f"error: {r['error']}"} if "error" in r else
             {**r, "backdoored_verdict": "yes" if r["concentration"] >= threshold else "no"} for r in rows]
    return markdown(shown, COLUMNS + REFERENCE_COLUMNS if reference else COLUMNS)


def budget_configs(eps: list[float], norm: str, steps: int, num_images: int, seed: int) -> dict[str, object]:
    """One `pbe_jax.DetectConfig` per distinct radius of `eps` (in order), keyed by its table label
    (`budget_label`): untargeted PGD in the `norm` ball (`pgd_config`) for `steps` steps on
    `num_images` images drawn with `seed`. Raises InputError naming the first unusable value."""
    from pbe_jax import DetectConfig

    bad = [e for e in eps if not e > 0]
    if bad:
        units = "1/255 units" if norm == "linf" else "[0, 1]-pixel units (L2 per image)"
        raise InputError(f"--eps {bad[0]:g}: expected positive radii in {units}")
    if steps < 1:
        raise InputError(f"--steps {steps}: expected at least 1 PGD step")
    configs = {budget_label(e, norm): DetectConfig(pgd=pgd_config(e, norm, steps), num_images=num_images, seed=seed)
               for e in dict.fromkeys(eps)}
    for config in configs.values():  # once for all runs, not one error row per run
        config.validate()
    return configs


def reference_detections(references: list[str], configs: dict[str, object], mesh, images: str = "test",
                         synthetic_steps: int = SYNTHESIS_STEPS) -> tuple[dict[Path, dict[str, dict]], set[str]]:
    """Detection on each model believed clean, before any other run: ({resolved run directory:
    {budget label: row}}, the datasets they were trained on). A reference named twice is attacked
    once. Raises InputError ('--reference RUN: ...') for an unusable reference or references of
    different datasets (found from the records, before attacking another model)."""
    rows: dict[Path, dict[str, dict]] = {}
    datasets: set[str] = set()
    for reference in references:
        reference_dir = output_dir(reference)
        try:
            record = rundir.read_record(reference_dir)
            datasets.add(record.get("dataset", "-"))
            if len(datasets) > 1:
                raise InputError(f"the models were trained on different datasets ({', '.join(sorted(datasets))}); "
                                 "expected models of one dataset, the runs' own")
            if reference_dir.resolve() not in rows:
                rows[reference_dir.resolve()] = {row["eps"]: row for row in detect_run(
                    reference_dir, configs, mesh, images, synthetic_steps, record)}
        except InputError as e:
            raise InputError(f"--reference {reference}: {e}") from None
    return rows, datasets


def detect_runs(runs: list[str], configs: dict[str, object], mesh, images: str = "test",
                synthetic_steps: int = SYNTHESIS_STEPS, references: list[str] | None = None,
                on_rows=None) -> list[dict]:
    """Detection rows for every run of `runs` (`detect_run`'s, one per budget of `configs`), with
    the reference columns (`with_reference`) when `references` names models believed clean. A run
    that cannot be used (no model, another dataset than the references') gives one error row
    {'run', 'error'} and the others go on; an unusable reference raises InputError before any run
    is attacked. A run that is also a reference is not attacked twice and is compared with the
    other references only (leave one out). `on_rows(rows)` is called with each run's rows as they
    are made (the CLI prints them)."""
    reference_rows, datasets = reference_detections(references or [], configs, mesh, images, synthetic_steps)
    rows = []
    for run in runs:
        run_dir = output_dir(run)
        try:
            if run_dir.resolve() in reference_rows:  # attacked already
                new = list(reference_rows[run_dir.resolve()].values())
            else:
                record = rundir.read_record(run_dir)
                dataset = record.get("dataset", "-")
                if datasets and dataset not in datasets:  # before attacking it
                    raise InputError(f"trained on {dataset}, the --reference models on {next(iter(datasets))}; "
                                     "expected the same dataset")
                new = detect_run(run_dir, configs, mesh, images, synthetic_steps, record)
        except InputError as e:  # one unusable run does not stop the table
            new = [{"run": run_dir.name, "error": str(e)}]
        if reference_rows:
            others = [by_eps for path, by_eps in reference_rows.items() if path != run_dir.resolve()]
            new = [with_reference(row, [by_eps[row["eps"]] for by_eps in others]) if "eps" in row else row
                   for row in new]
        if on_rows is not None:
            on_rows(new)
        rows += new
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories with a saved model")
    parser.add_argument("--num_images", type=int, default=500)
    parser.add_argument("--threshold", type=float, default=0.5, help="concentration at or above which a model is flagged")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, nargs="+", default=[6.0],
                        help="radius, or several (one row each): L-inf in 1/255 units (PBE's 6); L2 (--norm l2) "
                             "per image in [0, 1]-pixel units (e.g. 1 or 3); the step is eps/5")
    parser.add_argument("--norm", choices=NORMS, default="linf",
                        help="the PGD ball: linf (PBE's) or l2, which can spend its budget on a few pixels")
    parser.add_argument("--steps", type=int, default=7, help="PGD steps (PBE's 7)")
    parser.add_argument("--images", choices=IMAGES, default="test",
                        help="test: the dataset's test images; synthetic: DHBE's generator fitted to the model "
                             "(no data); noise: uniform pixels")
    parser.add_argument("--synthetic_steps", type=int, default=SYNTHESIS_STEPS,
                        help=f"generator steps for --images synthetic (DHBE's cpu warm-up: {SYNTHESIS_STEPS})")
    parser.add_argument("--reference", nargs="+", metavar="RUN",
                        help="run directories of models believed clean, trained on the same data: adds each row's "
                             "excess over the largest of their shares of the suspected class")
    parser.add_argument("--out", help="also write the Markdown table (and a .json of the rows) here")
    parser.add_argument("--num_devices", type=int, help="devices each batch is split over (default: all)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser`'s arguments, checked before any model is loaded (a bad one exits through
    parser.error): `args.configs` holds the budgets' DetectConfigs (`budget_configs`) and `args.out`
    the resolved table path (or None)."""
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold {args.threshold:g}: expected a concentration in (0, 1] (a share of the flipped images)")
    if args.num_images < 1:
        parser.error(f"--num_images {args.num_images}: expected at least 1")
    if args.synthetic_steps < 0:
        parser.error(f"--synthetic_steps {args.synthetic_steps}: expected a non-negative number of steps")
    if args.num_devices is not None and not 1 <= args.num_devices <= jax.device_count():
        parser.error(f"--num_devices {args.num_devices}: expected 1 to {jax.device_count()} (the devices of this host)")
    try:
        args.out = table_path(args.out)
        args.configs = budget_configs(args.eps, args.norm, args.steps, args.num_images, args.seed)
    except InputError as e:
        parser.error(str(e))
    return args


def main(argv=None) -> int:
    from backdoor_core.host_memory import keep_freed_memory

    try:
        keep_freed_memory()  # only with BACKDOOR_MALLOC=keep (backdoor_core/host_memory.py)
    except ValueError as e:  # a bad BACKDOOR_MALLOC
        sys.exit(f"error: {e}")
    parser = build_parser()
    args = parse_args(parser, argv)
    reference = bool(args.reference)
    try:
        rows = detect_runs(args.runs, args.configs, make_mesh(args.num_devices), args.images, args.synthetic_steps,
                           args.reference,
                           on_rows=lambda new: print("\n".join(
                               markdown_table(new, args.threshold, reference).splitlines()[2:]), flush=True))
    except InputError as e:  # an unusable reference: detect_runs raises before attacking any run
        parser.error(str(e))
    table = markdown_table(rows, args.threshold, reference)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
