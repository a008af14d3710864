"""Losses against a float64 NumPy reference written from docs/method.md §3's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvtcl_jax import losses

TAU = 0.07
# Jitted, as the train step runs them: one compile each, not one per eager operation.
info_nce = jax.jit(losses.info_nce)
mined_positive_mask = jax.jit(losses.mined_positive_mask, static_argnums=5)
cross_view_loss = jax.jit(losses.cross_view_loss)
local_loss = jax.jit(losses.local_loss)
local_temporal_loss = jax.jit(losses.local_temporal_loss)


def unit(rng, *shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nce_ref(z, positives, negatives, tau=TAU):
    """-log( sum_P e^{z.p/tau} / (sum_P e^{z.p/tau} + sum_N e^{z.n/tau}) ) for one anchor."""
    pos = sum(np.exp(z @ p / tau) for p in positives)
    neg = sum(np.exp(z @ n / tau) for n in negatives)
    return -np.log(pos / (pos + neg))


def mined_ref(other_anchor, queue_other, queue_ids, anchor_id, n_valid, k):
    """Indices of positives: same-source entries plus top-k of the rest by other-view similarity."""
    same = [j for j in range(n_valid) if queue_ids[j] == anchor_id]
    rest = [j for j in range(n_valid) if queue_ids[j] != anchor_id]
    sims = [(other_anchor @ queue_other[j], j) for j in rest]
    top = [j for _, j in sorted(sims, reverse=True)[:k]]
    return set(same) | set(top)


@pytest.mark.parametrize("b,n,d", [(4, 16, 8), (7, 33, 128), (1, 5, 3)])
def test_info_nce_matches_equation_1(b, n, d):
    rng = np.random.default_rng(b * 100 + n)
    q, k, queue = unit(rng, b, d), unit(rng, b, d), unit(rng, n, d)
    got = info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), TAU)
    want = [nce_ref(q[i], [k[i]], queue) for i in range(b)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("b,n,d,top_k,n_valid", [(6, 24, 16, 5, 24), (5, 40, 8, 1, 40), (3, 12, 4, 10, 9)])
def test_cross_view_loss_matches_equations_2_to_5(b, n, d, top_k, n_valid):
    rng = np.random.default_rng(top_k)
    q, k, queue = unit(rng, b, d), unit(rng, b, d), unit(rng, n, d)
    other_anchor, queue_other = unit(rng, b, d), unit(rng, n, d)
    ids = np.arange(b, dtype=np.int32)
    queue_ids = rng.integers(0, 2 * b, n).astype(np.int32)  # some entries share an anchor's source
    queue_ids[n_valid:] = -1
    valid = np.arange(n) < n_valid
    keep_self = np.array([i % 2 == 0 for i in range(b)])

    mask = mined_positive_mask(
        jnp.asarray(other_anchor),
        jnp.asarray(queue_other),
        jnp.asarray(queue_ids),
        jnp.asarray(ids),
        jnp.asarray(valid),
        top_k,
    )
    got = cross_view_loss(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), mask, jnp.asarray(keep_self), TAU
    )
    mask, got = np.asarray(mask), np.asarray(got)  # read row by row below
    for i in range(b):
        pos_idx = mined_ref(other_anchor[i], queue_other, queue_ids, ids[i], n_valid, top_k)
        assert set(np.flatnonzero(np.asarray(mask[i]))) == pos_idx
        positives = [queue[j] for j in pos_idx] + ([k[i]] if keep_self[i] else [])
        pos = sum(np.exp(q[i] @ p / TAU) for p in positives)
        everything = np.exp(q[i] @ k[i] / TAU) + sum(np.exp(q[i] @ x / TAU) for x in queue)
        np.testing.assert_allclose(float(got[i]), -np.log(pos / everything), rtol=2e-5, atol=1e-5)


def test_cross_view_loss_with_k_0_is_info_nce():
    rng = np.random.default_rng(0)
    b, n, d = 8, 32, 16
    q, k, queue = unit(rng, b, d), unit(rng, b, d), unit(rng, n, d)
    mask = mined_positive_mask(
        jnp.asarray(unit(rng, b, d)),
        jnp.asarray(unit(rng, n, d)),
        jnp.full((n,), -1, jnp.int32),
        jnp.arange(b),
        jnp.ones((n,), bool),
        0,
    )
    assert not np.any(np.asarray(mask))
    got = cross_view_loss(q, k, queue, mask, jnp.ones((b,), bool), TAU)
    np.testing.assert_allclose(got, info_nce(q, k, queue, TAU), rtol=1e-6)


@pytest.mark.parametrize("b,s,n,d", [(4, 4, 16, 8), (3, 2, 10, 32), (5, 6, 7, 4)])
def test_ltcl_terms_match_equations_6_and_7(b, s, n, d):
    rng = np.random.default_rng(s * 10 + b)
    z1, segs, queue = unit(rng, b, d), unit(rng, b, s, d), unit(rng, n, d)
    local = local_loss(jnp.asarray(z1), jnp.asarray(segs), jnp.asarray(queue), TAU)
    lt = local_temporal_loss(jnp.asarray(z1), jnp.asarray(segs[:, 0]), jnp.asarray(segs[:, 1:]), TAU)
    local, lt = np.asarray(local), np.asarray(lt)
    for i in range(b):
        want_local = np.mean([nce_ref(z1[i], [segs[i, j]], queue) for j in range(s)])
        want_lt = nce_ref(z1[i], [segs[i, 0]], segs[i, 1:])
        np.testing.assert_allclose(float(local[i]), want_local, rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(float(lt[i]), want_lt, rtol=2e-5, atol=1e-5)


def cross_entropy_label0(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[:, 0])


def test_ltcl_with_two_segments_is_algorithm_1():
    """The paper's Algorithm 1 (PyTorch pseudo-code), transcribed literally into NumPy."""
    rng = np.random.default_rng(7)
    n, c, k = 6, 16, 20
    s1_q, s1_k, s2_k, queue = unit(rng, n, c), unit(rng, n, c), unit(rng, n, c), unit(rng, k, c).T
    l_pos1 = np.einsum("nc,nc->n", s1_q, s1_k)[:, None]
    l_pos2 = np.einsum("nc,nc->n", s1_q, s2_k)[:, None]
    l_pos = np.concatenate([l_pos1, l_pos2], axis=0)
    l_neg = np.einsum("nc,ck->nk", s1_q, queue)
    logits = np.concatenate([l_pos, np.tile(l_neg, (2, 1))], axis=1) / TAU
    l_neg1 = np.einsum("nc,nc->n", s1_q, s2_k)[:, None]
    logits1 = np.concatenate([l_pos1, l_neg1], axis=-1) / TAU
    want = cross_entropy_label0(logits) + cross_entropy_label0(logits1)

    segs = np.stack([s1_k, s2_k], axis=1)
    got = jnp.mean(local_loss(s1_q, segs, queue.T, TAU)) + jnp.mean(
        local_temporal_loss(s1_q, s1_k, s2_k[:, None], TAU)
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_losses_are_finite_for_identical_vectors():
    z = jnp.ones((2, 4)) / 2.0
    assert np.all(np.isfinite(info_nce(z, z, jnp.tile(z[:1], (50, 1)), 0.01)))


def test_embedding_spread():
    same = jnp.tile(jnp.array([[0.6, 0.8, 0.0]]), (5, 1))
    np.testing.assert_allclose(float(losses.embedding_spread(same)), 0.0, atol=1e-7)
    # Two opposite vectors: std 1 along the first axis, 0 along the second -> sqrt(2) * 0.5.
    opposite = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(float(losses.embedding_spread(opposite)), np.sqrt(2) / 2, rtol=1e-6)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4096, 64))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(float(losses.embedding_spread(jnp.asarray(z))), 1.0, atol=0.02)


def test_instance_top1():
    logits = jnp.array([[3.0, 1.0, 2.0], [1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(losses.instance_top1(logits), [True, False])
