"""Mesh and shardings: the batch and the queue are split over the data axis, the rest replicated."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cvtcl_jax.queue import Queue
from cvtcl_jax.state import TrainState

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


def state_sharding(mesh: Mesh, state: TrainState) -> TrainState:
    """Sharding pytree matching `state` (arrays or ShapeDtypeStructs): queue rows split."""
    rep = replicated(mesh)
    rows = batch_sharding(mesh)
    tree = jax.tree.map(lambda _: rep, state)
    return tree.replace(queue=Queue(keys=rows, other=rows, ids=rows, ptr=rep, fill=rep))


def shard_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local NumPy batch -> global jax.Arrays split over the data axis (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }
