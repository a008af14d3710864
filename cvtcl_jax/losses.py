"""The CVTCL losses (docs/method.md §3) as pure functions of unit-norm embeddings.

Every loss returns one value per anchor row, shape (B,); the train step averages. All use
logsumexp, so they are stable at tau = 0.07 where exp(1/tau) ~ 1.6e6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def multi_positive_nce(logits, positive_mask):
    """-log(mass on the positives of one softmax). logits, positive_mask: (B, M) -> (B,).

    Every row must have at least one positive.
    """
    everything = jax.nn.logsumexp(logits, axis=-1)
    positives = jax.nn.logsumexp(logits, axis=-1, where=positive_mask)
    return everything - positives


def first_column_nce(logits):
    """-log softmax(logits)[:, 0]: the NCE of a row whose only positive is column 0. (B, M) -> (B,)."""
    return jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]


def info_nce(q, k, negatives, tau):
    """Eq. (1): q, k: (B, D) unit vectors, negatives: (N, D) -> (B,).

    -log(e^{q.k/tau} / (e^{q.k/tau} + sum_n e^{q.n/tau})).
    """
    return first_column_nce(instance_logits(q, k, negatives, tau))


def instance_logits(q, k, negatives, tau):
    """[q.k, q.n_1, ..., q.n_N] / tau: (B, D), (B, D), (N, D) -> (B, 1 + N)."""
    pos = jnp.sum(q * k, axis=-1, keepdims=True)
    return jnp.concatenate([pos, q @ negatives.T], axis=-1) / tau


def instance_top1(logits):
    """Whether column 0 (the own key) is the largest logit of its row: (B, 1 + N) -> (B,) bool."""
    return logits[:, 0] >= jnp.max(logits[:, 1:], axis=-1)


def embedding_spread(z):
    """How spread unit vectors z (B, D) are: sqrt(D) x the mean over dimensions of their standard
    deviation over the rows. -> ().

    About 1 for vectors spread evenly over the sphere, 0 when every row is the same vector. A
    contrastive run whose embeddings collapse onto one direction (the loss stuck near
    log(1 + queue size), the gradient norm fading) shows it here as a fall toward 0.
    """
    return jnp.sqrt(z.shape[-1]) * jnp.mean(jnp.std(z, axis=0))


def mined_positive_mask(other_anchor, queue_other, queue_ids, ids, valid, top_k):
    """Eqs. (3)/(5): which queue entries are positives for each anchor. -> (B, N) bool.

    other_anchor: (B, D) the anchors' embeddings in the *other* view's space.
    queue_other: (N, D) the other view's embeddings of the queued keys.
    queue_ids, ids: (N,), (B,) source ids; valid: (N,) bool, entries written so far.

    Entries of the anchor's own source are positives and are excluded from the ranking; among the
    remaining valid entries the `top_k` most similar in the other view are positives too.
    """
    same_source = (queue_ids[None, :] == ids[:, None]) & valid[None, :]
    if top_k == 0:
        return same_source
    rankable = valid[None, :] & ~same_source
    scores = jnp.where(rankable, other_anchor @ queue_other.T, -jnp.inf)
    top_scores, top_idx = lax.top_k(scores, top_k)
    rows = jnp.arange(scores.shape[0])[:, None]
    # A row with fewer than top_k rankable entries would pick -inf ones: drop those.
    picked = jnp.zeros(scores.shape, bool).at[rows, top_idx].set(top_scores > -jnp.inf)
    return same_source | picked


def cross_view_loss(q, k, queue_keys, queue_positive, keep_self, tau):
    """Eqs. (2)/(4), L_RF: one softmax over [own key, queue], minus log mass on the positives.

    q, k: (B, D); queue_keys: (N, D); queue_positive: (B, N) bool from `mined_positive_mask`;
    keep_self: (B,) bool, whether the own key counts as a positive (self-positive dropout may
    remove it for rows with other positives; it always stays in the denominator). -> (B,).
    """
    logits = instance_logits(q, k, queue_keys, tau)
    mask = jnp.concatenate([keep_self[:, None], queue_positive], axis=-1)
    return multi_positive_nce(logits, mask)


def local_loss(z1, positives, queue_keys, tau):
    """Eq. (6): mean over the S positives p of NCE(z1, {p}, queue).

    z1: (B, D) anchor segment s_1 through f_q; positives: (B, S, D) = [s_1^a, s_2, ..., s_S]
    through f_k; queue_keys: (N, D) negatives shared by all S terms. -> (B,).
    """
    pos = jnp.einsum("bd,bsd->bs", z1, positives) / tau  # (B, S)
    neg = (z1 @ queue_keys.T) / tau  # (B, N)
    neg_lse = jax.nn.logsumexp(neg, axis=-1, keepdims=True)  # (B, 1)
    per_positive = jnp.logaddexp(pos, neg_lse) - pos  # (B, S)
    return jnp.mean(per_positive, axis=-1)


def local_temporal_loss(z1, z1_aug, others, tau):
    """Eq. (7): NCE(z1, {z1^a}, {z_2, ..., z_S}); the same video's other segments are negatives.

    z1, z1_aug: (B, D); others: (B, S - 1, D). -> (B,).
    """
    pos = jnp.sum(z1 * z1_aug, axis=-1, keepdims=True)
    neg = jnp.einsum("bd,bsd->bs", z1, others)
    return first_column_nce(jnp.concatenate([pos, neg], axis=-1) / tau)
