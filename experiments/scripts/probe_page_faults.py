"""Page faults, CPU time and resident memory per call of one of our jitted steps (issue 7).

  BACKDOOR_MALLOC=keep|system PYTHONPATH=. python experiments/scripts/probe_page_faults.py \
      {train,pgd,dhbe} [--width 0.25] [--batch 128] [--model preact_resnet18] [--calls 8]

Prints one line per call (wall and CPU seconds, minor page faults in MB, resident set in MB)
and their medians. Page faults and CPU time (user + system) hardly depend on what else runs on
the machine, unlike wall time, so this compares host-memory settings on a busy machine too.
Run once per setting: `keep_freed_memory` only holds in a fresh process.
"""

from __future__ import annotations

import argparse
import resource
import time

from backdoor_core.host_memory import keep_freed_memory, malloc_choice


def resident_mb() -> int:
    """This process's resident set (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("train", "pgd", "dhbe"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="preact_resnet18")
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    applied = keep_freed_memory()  # before JAX's first computation

    import jax
    import numpy as np

    from backdoor_core.models import ModelSpec, init_variables
    from experiments import bench

    spec = ModelSpec(args.model, 10, (32, 32, 3), args.width, bench.CIFAR_MEAN, bench.CIFAR_STD)
    variables = init_variables(spec, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.batch)
    run = {"train": lambda: bench.our_train(spec, variables, x, y), "pgd": lambda: bench.our_pgd(spec, variables, x, y),
           "dhbe": lambda: bench.our_dhbe(spec, variables, args.batch)}[args.task]()
    run()  # compile
    print(f"# {args.task} {args.model} width {args.width:g} batch {args.batch}, malloc {malloc_choice()} "
          f"(applied: {applied})")
    rows = []
    for i in range(args.calls):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run()
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        faults_mb = (after.ru_minflt - before.ru_minflt) * resource.getpagesize() / 2 ** 20
        rows.append((wall, cpu, after.ru_stime - before.ru_stime, faults_mb, resident_mb()))
        print(f"call {i}: wall {wall:.2f} s  cpu {cpu:.2f} s (system {rows[-1][2]:.2f})  faults {faults_mb:.0f} MB  "
              f"resident {rows[-1][4]} MB", flush=True)
    med = np.median(np.array(rows), axis=0)
    print(f"median: wall {med[0]:.2f} s  cpu {med[1]:.2f} s (system {med[2]:.2f})  faults {med[3]:.0f} MB  "
          f"peak resident {max(r[4] for r in rows)} MB")


if __name__ == "__main__":
    main()
