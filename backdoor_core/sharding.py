"""Data parallelism over a 1-D `jax.sharding.Mesh` with a `data` axis.

Batches are sharded along their leading axis, parameters and optimiser state replicated, so
one code path serves one CPU, several GPUs or a TPU slice. With
`XLA_FLAGS=--xla_force_host_platform_device_count=N` a CPU shows N devices for tests.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from backdoor_core.errors import InputError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A mesh over the first `num_devices` devices (all by default) with one `data` axis."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise InputError(f"asked for {num_devices} devices; this host has {len(devices)}")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh's data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises InputError unless `batch_size` divides evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise InputError(f"{what} {batch_size} does not divide over {n} devices; expected a multiple of {n}")


def shard_batch(mesh: Mesh, *arrays):
    """Places host arrays [B, ...] on the mesh, split along B. Returns one array or a tuple."""
    sharding = data_sharding(mesh)
    placed = tuple(jax.device_put(a, sharding) for a in arrays)
    return placed[0] if len(placed) == 1 else placed


def replicate(mesh: Mesh, tree):
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def unroll_loops(mesh: Mesh | None = None) -> bool:
    """Whether compiled loops (PGD steps, DHBE's student scan) are unrolled at trace time.

    True on CPU backends, where XLA:CPU runs a rolled loop body's convolutions several times
    slower; False on GPU/TPU, where unrolling only multiplies compile time (a DHBE iteration of
    ResNet-18 took minutes to compile unrolled on an H200). The environment variable
    BACKDOOR_UNROLL=1/0 overrides the choice.
    """
    forced = os.environ.get("BACKDOOR_UNROLL")
    if forced in ("0", "1"):
        return forced == "1"
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return platform == "cpu"
