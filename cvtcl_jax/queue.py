"""The MoCo key queue as a pytree: a ring buffer written with the global batch of keys."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from cvtcl_jax.models.contrastive_encoder import l2_normalize


@flax.struct.dataclass
class Queue:
    """Queued keys of past batches.

    keys: (K, D) key embeddings of the trained view (the negatives).
    other: (K, D) the other view's embeddings of the same clips (co-training's ranking space).
    ids: (K,) int32 source id of each entry; -1 where nothing was written yet.
    ptr: () int32 next write position. fill: () int32 entries written so far, at most K.
    """

    keys: jax.Array
    other: jax.Array
    ids: jax.Array
    ptr: jax.Array
    fill: jax.Array

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def valid(self):
        """(K,) bool: entries that hold a real key (writing starts at 0 and wraps)."""
        return jnp.arange(self.size) < self.fill

    def is_full(self):
        """() bool: every entry has been written at least once."""
        return self.fill >= self.size


def check_queue_size(size: int, global_batch: int) -> None:
    """Raises ValueError unless the queue holds a whole number of global batches."""
    if size <= 0 or global_batch <= 0 or size % global_batch:
        raise ValueError(
            f"queue_size={size} must be a positive multiple of the global batch size "
            f"{global_batch} so that every batch is written whole; e.g. use queue_size="
            f"{max(1, round(size / max(global_batch, 1))) * global_batch}"
        )


def init_queue(rng, size: int, dim: int, global_batch: int) -> Queue:
    """A queue of `size` random unit keys (as MoCo starts), marked empty for mining."""
    check_queue_size(size, global_batch)
    k1, k2 = jax.random.split(rng)
    return Queue(
        keys=l2_normalize(jax.random.normal(k1, (size, dim), jnp.float32)),
        other=l2_normalize(jax.random.normal(k2, (size, dim), jnp.float32)),
        ids=jnp.full((size,), -1, jnp.int32),
        ptr=jnp.zeros((), jnp.int32),
        fill=jnp.zeros((), jnp.int32),
    )


def enqueue(queue: Queue, keys, other, ids) -> Queue:
    """Writes one global batch at `ptr`. keys, other: (B, D); ids: (B,). B divides K."""
    b = keys.shape[0]
    if queue.size % b:
        raise ValueError(f"batch of {b} keys does not divide the queue size {queue.size}")
    ptr = queue.ptr
    return queue.replace(
        keys=lax.dynamic_update_slice_in_dim(queue.keys, keys.astype(queue.keys.dtype), ptr, 0),
        other=lax.dynamic_update_slice_in_dim(queue.other, other.astype(queue.other.dtype), ptr, 0),
        ids=lax.dynamic_update_slice_in_dim(queue.ids, ids.astype(jnp.int32), ptr, 0),
        ptr=(ptr + b) % queue.size,
        fill=jnp.minimum(queue.fill + b, queue.size),
    )
