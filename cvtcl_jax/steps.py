"""Train steps of both stages: initialization (one view) and co-training (other view frozen).

A step maps (state, batch[, frozen]) -> (state, metrics) and is pure: no I/O, no TensorFlow. The
batch is a dict of global arrays (B = global batch):

  query, key:  (B, T, H, W, 3) the two clips of each video (f_q gets query, f_k gets key)
  ids:         (B,) int32 source id of each video (its queue entries count as positives)
  anchor:      (B, L, H, W, 3) LTCL segment s_1 for f_q            (only when LTCL is on)
  segments:    (B, S, L, H, W, 3) [s_1^a, s_2, ..., s_S] for f_k    (only when LTCL is on)
  other_key:   (B, T, H, W, 3) the key clip in the other view       (co-training only)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh

from cvtcl_jax import losses
from cvtcl_jax.queue import enqueue
from cvtcl_jax.sharding import batch_sharding, replicated
from cvtcl_jax.state import FrozenEncoder, TrainState, state_sharding


@dataclasses.dataclass(frozen=True)
class ContrastConfig:
    """The numbers of the contrastive objective (docs/method.md §2-3); defaults are the paper's.

    alpha weighs the global term (InfoNCE or L_RF), beta the LTCL term; local_weight and lt_weight
    switch the two LTCL parts on or off for the Table 1 ablation. top_k is K of Eqs. (3)/(5);
    self_pos_dropout the per-step probability of dropping the own key from the positive set.
    """

    tau: float = 0.07
    momentum: float = 0.999
    alpha: float = 1.0
    beta: float = 1.0
    local_weight: float = 1.0
    lt_weight: float = 1.0
    top_k: int = 5
    self_pos_dropout: float = 0.9

    def __post_init__(self):
        checks = (
            (self.tau > 0, "tau must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 <= self.self_pos_dropout <= 1, "self_pos_dropout must be in [0, 1]"),
            (min(self.alpha, self.beta, self.local_weight, self.lt_weight) >= 0, "loss weights must be >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")

    @property
    def use_ltcl(self) -> bool:
        """Whether the batch needs LTCL segments (skipping them saves half the key compute)."""
        return self.beta > 0 and (self.local_weight > 0 or self.lt_weight > 0)


StepFn = Callable[..., tuple[TrainState, dict]]


class Keys(NamedTuple):
    """What the key encoder f_k gives a step: key embeddings (B, D), the LTCL segments' (B, S, D)
    (None without LTCL), and its BN statistics after both passes."""

    key: jax.Array
    segments: jax.Array | None
    batch_stats: dict


class Positives(NamedTuple):
    """Co-training's positives in the queue (B, N) bool (Eqs. (3)/(5)) and whether each row's own
    key stays a positive (B,) bool (self-positive dropout)."""

    queue: jax.Array
    keep_self: jax.Array


def _embed(model, params, batch_stats, clips):
    """clips through an encoder in training mode (BN statistics of the batch, running ones
    updated): ((N, D) embeddings, updated batch_stats)."""
    variables = {"params": params, "batch_stats": batch_stats}
    (_, z), updates = model.apply(variables, clips, train=True, mutable=["batch_stats"])
    return z, updates["batch_stats"]


def _key_embed(model, params, batch_stats, clips, rng):
    """Key encoder on a shuffled batch (shuffle-BN), returned in the original order.

    clips: (N, ...) -> ((N, D) stop-gradient embeddings, updated batch_stats). The permutation
    puts each clip into a different BN group than its query, so BN cannot leak the pairing.
    """
    perm = jax.random.permutation(rng, clips.shape[0])
    z, stats = _embed(model, params, batch_stats, clips[perm])
    z = jnp.zeros_like(z).at[perm].set(z)
    return lax.stop_gradient(z), stats


def _keys(model, use_ltcl: bool, params, batch_stats, batch: dict, rngs) -> Keys:
    """The key clips, and the LTCL segments when `use_ltcl`, through the key encoder."""
    k, stats = _key_embed(model, params, batch_stats, batch["key"], rngs[0])
    if not use_ltcl:
        return Keys(k, None, stats)
    seg = batch["segments"]
    b, s = seg.shape[:2]
    zs, stats = _key_embed(model, params, stats, seg.reshape((b * s, *seg.shape[2:])), rngs[1])
    return Keys(k, zs.reshape((b, s, -1)), stats)


def _select(pred, new, old):
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def _cross_view_positives(other_model, cfg, frozen, batch, queue, ids, mining, rng):
    """Co-training's positives: the key clips in the other view through the frozen network
    (inference mode) rank the queue's other-view entries. No mining until `mining` (the queue
    full): its other-view entries are still random. -> (other-view embeddings (B, D), Positives,
    metrics)."""
    _, other_z = other_model.apply(
        {"params": frozen.params, "batch_stats": frozen.batch_stats}, batch["other_key"], train=False
    )
    other_z = lax.stop_gradient(other_z)
    mask = losses.mined_positive_mask(other_z, queue.other, queue.ids, ids, queue.valid(), cfg.top_k)
    mask = mask & mining
    drop = jax.random.bernoulli(rng, cfg.self_pos_dropout)
    keep_self = ~(drop & jnp.any(mask, axis=-1))
    metrics = {
        "mined_positives": jnp.mean(jnp.sum(mask, axis=-1)),
        "self_positive_dropped": jnp.mean(~keep_self),
    }
    return other_z, Positives(mask, keep_self), metrics


def _objective(model, cfg, params, batch_stats, batch: dict, keys: Keys, queue_keys, positives):
    """The query encoder's loss, L1 = alpha * InfoNCE + beta * LTCL (initialization, `positives`
    None) or L2 = alpha * L_RF + beta * LTCL (co-training), each term the `losses` function its
    equation names. -> (loss, (updated batch_stats, terms))."""
    q, stats = _embed(model, params, batch_stats, batch["query"])
    k, tau = keys.key, cfg.tau
    if positives is None:
        glob = jnp.mean(losses.info_nce(q, k, queue_keys, tau))  # Eq. (1)
        terms = {"loss_infonce": glob}
    else:  # Eqs. (2)/(4)
        glob = jnp.mean(losses.cross_view_loss(q, k, queue_keys, positives.queue, positives.keep_self, tau))
        terms = {"loss_rf": glob}
    terms["inst_top1"] = jnp.mean(losses.instance_top1(losses.instance_logits(q, k, queue_keys, tau)))
    terms["embed_spread"] = losses.embedding_spread(q)
    loss = cfg.alpha * glob
    if cfg.use_ltcl:
        z1, stats = _embed(model, params, stats, batch["anchor"])
        zs = keys.segments
        local = jnp.mean(losses.local_loss(z1, zs, queue_keys, tau))  # Eq. (6)
        lt = jnp.mean(losses.local_temporal_loss(z1, zs[:, 0], zs[:, 1:], tau))  # Eq. (7)
        ltcl = cfg.local_weight * local + cfg.lt_weight * lt
        terms.update(loss_local=local, loss_lt=lt, loss_ltcl=ltcl)
        loss = loss + cfg.beta * ltcl
    terms["loss"] = loss
    return loss, (stats, terms)


def make_train_step(
    model,
    cfg: ContrastConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    other_model=None,
) -> StepFn:
    """Builds the step of one stage (docs/method.md, Algorithm 1).

    Without `other_model`: the initialization step, L1 = alpha * InfoNCE + beta * LTCL, called as
    `step(state, batch)`. With `other_model` (the frozen other view's ContrastiveEncoder): the
    co-training step, L2 = alpha * L_RF + beta * LTCL, called as `step(state, batch, frozen)`; it
    runs forward-only (queue and BN statistics advance; parameters, EMA, optimiser do not) until
    the queue has been filled once.
    """
    cotrain = other_model is not None

    def step(state: TrainState, batch: dict, frozen: FrozenEncoder | None = None):
        rng = jax.random.wrap_key_data(state.rng)
        rng, k_perm, k_seg_perm, k_drop = jax.random.split(rng, 4)
        queue = state.queue
        ids = batch["ids"].astype(jnp.int32)
        do_update = queue.is_full() if cotrain else jnp.bool_(True)

        # Momentum update before the keys are computed, as MoCo does.
        ema_params = optax.incremental_update(state.params, state.ema_params, 1.0 - cfg.momentum)
        ema_params = _select(do_update, ema_params, state.ema_params)
        keys = _keys(model, cfg.use_ltcl, ema_params, state.ema_batch_stats, batch, (k_perm, k_seg_perm))
        metrics, positives, other_keys = {}, None, jnp.zeros_like(keys.key)
        if cotrain:
            other_keys, positives, metrics = _cross_view_positives(
                other_model, cfg, frozen, batch, queue, ids, do_update, k_drop
            )

        def loss_fn(params):
            return _objective(model, cfg, params, state.batch_stats, batch, keys, queue.keys, positives)

        (_, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        new_queue = enqueue(queue, keys.key, other_keys, ids)
        metrics.update(terms)
        metrics.update(
            grad_norm=optax.tree.norm(grads),
            lr=jnp.asarray(schedule(state.step), jnp.float32),
            queue_fill=new_queue.fill / new_queue.size,
            updated=do_update.astype(jnp.float32),
        )
        new_state = state.replace(
            step=state.step + do_update.astype(jnp.int32),
            params=_select(do_update, params, state.params),
            batch_stats=batch_stats,
            ema_params=ema_params,
            ema_batch_stats=keys.batch_stats,
            opt_state=_select(do_update, opt_state, state.opt_state),
            queue=new_queue,
            rng=jax.random.key_data(rng),
        )
        return new_state, metrics

    return step


def jit_train_step(step: StepFn, mesh: Mesh, state: TrainState, cotrain: bool = False) -> StepFn:
    """jit over `mesh`: batch and queue split on the data axis, state donated.

    `state` may be the real state or its `jax.eval_shape`; it only fixes the pytree structure.
    """
    state_sh = state_sharding(mesh, state)
    in_shardings = (state_sh, batch_sharding(mesh))
    if cotrain:
        in_shardings += (replicated(mesh),)
    return jax.jit(
        step,
        in_shardings=in_shardings,
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )
