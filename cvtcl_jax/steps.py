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


def _key_embed(model, params, batch_stats, clips, rng):
    """Key encoder on a shuffled batch (shuffle-BN), returned in the original order.

    clips: (N, ...) -> ((N, D) stop-gradient embeddings, updated batch_stats). The permutation
    puts each clip into a different BN group than its query, so BN cannot leak the pairing.
    """
    perm = jax.random.permutation(rng, clips.shape[0])
    (_, z), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, clips[perm], train=True, mutable=["batch_stats"]
    )
    z = jnp.zeros_like(z).at[perm].set(z)
    return lax.stop_gradient(z), updates["batch_stats"]


def _select(pred, new, old):
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def make_train_step(
    model,
    cfg: ContrastConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    other_model=None,
) -> StepFn:
    """Builds the step of one stage.

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
        k, ema_stats = _key_embed(model, ema_params, state.ema_batch_stats, batch["key"], k_perm)
        if cfg.use_ltcl:
            seg = batch["segments"]
            b, s = seg.shape[:2]
            zs, ema_stats = _key_embed(
                model, ema_params, ema_stats, seg.reshape((b * s, *seg.shape[2:])), k_seg_perm
            )
            zs = zs.reshape((b, s, -1))

        metrics = {}
        if cotrain:
            _, other_z = other_model.apply(
                {"params": frozen.params, "batch_stats": frozen.batch_stats},
                batch["other_key"],
                train=False,
            )
            other_z = lax.stop_gradient(other_z)
            queue_pos = losses.mined_positive_mask(
                other_z, queue.other, queue.ids, ids, queue.valid(), cfg.top_k
            )
            # No mining until the queue is full: its other-view entries are still random.
            queue_pos = queue_pos & do_update
            has_other = jnp.any(queue_pos, axis=-1)
            drop = jax.random.bernoulli(k_drop, cfg.self_pos_dropout)
            keep_self = ~(drop & has_other)
            metrics["mined_positives"] = jnp.mean(jnp.sum(queue_pos, axis=-1))
            metrics["self_positive_dropped"] = jnp.mean(~keep_self)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            (_, q), upd = model.apply(variables, batch["query"], train=True, mutable=["batch_stats"])
            stats = upd["batch_stats"]
            logits = losses.instance_logits(q, k, queue.keys, cfg.tau)
            if cotrain:
                mask = jnp.concatenate([keep_self[:, None], queue_pos], axis=-1)
                glob = jnp.mean(losses.multi_positive_nce(logits, mask))
                terms = {"loss_rf": glob}
            else:
                glob = jnp.mean(losses.first_column_nce(logits))
                terms = {"loss_infonce": glob}
            terms["inst_top1"] = jnp.mean(losses.instance_top1(logits))
            terms["embed_spread"] = losses.embedding_spread(q)
            loss = cfg.alpha * glob
            if cfg.use_ltcl:
                variables = {"params": params, "batch_stats": stats}
                (_, z1), upd = model.apply(variables, batch["anchor"], train=True, mutable=["batch_stats"])
                stats = upd["batch_stats"]
                local = jnp.mean(losses.local_loss(z1, zs, queue.keys, cfg.tau))
                lt = jnp.mean(losses.local_temporal_loss(z1, zs[:, 0], zs[:, 1:], cfg.tau))
                ltcl = cfg.local_weight * local + cfg.lt_weight * lt
                terms.update(loss_local=local, loss_lt=lt, loss_ltcl=ltcl)
                loss = loss + cfg.beta * ltcl
            terms["loss"] = loss
            return loss, (stats, terms)

        (_, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        other_keys = other_z if cotrain else jnp.zeros_like(k)
        new_queue = enqueue(queue, k, other_keys, ids)
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
            ema_batch_stats=ema_stats,
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
