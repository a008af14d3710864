"""Mesh and shardings: batches are split over the data axis, the rest replicated (the train
state's layout, with its queue rows split too, is `state.state_sharding`)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """1-d mesh over all (or the given) devices with Auto axis semantics.

    Built with `Mesh(...)` rather than `jax.make_mesh`, whose default Explicit axes reject the
    `q @ queue.T` products between batch-sharded operands.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_global_batch(global_batch: int, mesh: Mesh) -> None:
    """Raises ValueError unless the global batch splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if global_batch <= 0 or global_batch % n:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {n} devices in use; "
            f"choose a multiple of {n} (e.g. {max(1, global_batch // n) * n})"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; works for any rank."""
    return NamedSharding(mesh, P(DATA_AXIS))


def copied(tree):
    """A copy of a tree of arrays on buffers of its own, each leaf keeping its sharding, so that
    what is taken from a state outlives the state's donation to a step. A device-to-device copy:
    nothing is compiled (an eager jnp.copy compiles a program per leaf shape, 152 for the full S3D)."""
    return jax.device_put(tree, jax.tree.map(lambda x: x.sharding, tree), may_alias=False)


def shard_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local NumPy batch -> global jax.Arrays split over the data axis (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }


def prefetch_to_mesh(
    batches: Iterator[Mapping[str, np.ndarray]],
    mesh: Mesh,
    size: int = 2,
    host_keys: tuple[str, ...] = (),
    transform: Callable[[dict], dict] | None = None,
) -> Iterator[dict]:
    """Host batches -> global arrays, `size` batches ahead, so transfers overlap the step.

    Keys in `host_keys` (per-sample statistics such as `padded`) stay NumPy and are not sent.
    transform: applied to the global arrays as they are sent (the on-device colour augmentation),
    so its work is queued ahead of the steps that consume them.
    """
    batches = iter(batches)
    queue: collections.deque = collections.deque()

    def put(batch):
        on_device = shard_batch(mesh, {k: v for k, v in batch.items() if k not in host_keys})
        if transform is not None:
            on_device = transform(on_device)
        on_device.update({k: np.asarray(batch[k]) for k in host_keys if k in batch})
        queue.append(on_device)

    for batch in itertools.islice(batches, size):
        put(batch)
    while queue:
        out = queue.popleft()
        for batch in itertools.islice(batches, 1):
            put(batch)
        yield out
