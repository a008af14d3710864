"""The ring-buffer queue: wrap-around, fill count, validity and size checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvtcl_jax.queue import enqueue, init_queue


def test_queue_wraps_and_tracks_fill():
    q = init_queue(jax.random.key(0), size=8, dim=3, global_batch=4)
    np.testing.assert_allclose(jnp.linalg.norm(q.keys, axis=-1), 1.0, rtol=1e-6)
    assert int(q.fill) == 0 and not q.is_full() and not np.any(q.valid())
    for step in range(3):
        keys = jnp.full((4, 3), float(step))
        q = enqueue(q, keys, -keys, jnp.arange(4) + 10 * step)
        assert int(q.fill) == min(4 * (step + 1), 8)
    # Batches 0, 1, 2 went to rows 0-3, 4-7, then 0-3 again.
    np.testing.assert_array_equal(q.ids, [20, 21, 22, 23, 10, 11, 12, 13])
    np.testing.assert_array_equal(q.keys[:, 0], [2, 2, 2, 2, 1, 1, 1, 1])
    np.testing.assert_array_equal(q.other[:, 0], [-2, -2, -2, -2, -1, -1, -1, -1])
    assert int(q.ptr) == 4 and bool(q.is_full()) and np.all(q.valid())


def test_partially_filled_queue_marks_only_written_rows_valid():
    q = init_queue(jax.random.key(0), size=12, dim=2, global_batch=4)
    q = enqueue(q, jnp.ones((4, 2)), jnp.ones((4, 2)), jnp.arange(4))
    np.testing.assert_array_equal(q.valid(), [True] * 4 + [False] * 8)


@pytest.mark.parametrize("size,batch", [(10, 4), (0, 4), (8, 0)])
def test_queue_size_must_be_a_multiple_of_the_global_batch(size, batch):
    with pytest.raises(ValueError, match="multiple of the global batch"):
        init_queue(jax.random.key(0), size=size, dim=2, global_batch=batch)
