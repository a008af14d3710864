"""Train state of one view: query encoder, its EMA key encoder, optimiser, queue and RNG."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cvtcl_jax.queue import Queue, init_queue
from cvtcl_jax.sharding import batch_sharding, replicated


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes (donated to the step).

    step: () int32 optimiser steps taken (forward-only warm-up steps are not counted).
    params / batch_stats: query encoder f_q + g_q variables.
    ema_params / ema_batch_stats: key encoder f_k + g_k (EMA of the parameters; its BN statistics
      come from its own forward passes).
    opt_state: optax state of `params`. queue: the key queue.
    rng: (2,) uint32 raw key data (raw so that checkpoints need no typed-key support).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    ema_params: Any
    ema_batch_stats: Any
    opt_state: Any
    queue: Queue
    rng: jax.Array


@flax.struct.dataclass
class FrozenEncoder:
    """The other view's network during co-training: variables only, never updated."""

    params: Any
    batch_stats: Any

    @classmethod
    def from_state(cls, state: TrainState, encoder: str = "encoder") -> FrozenEncoder:
        """A trained view's query network (`encoder`, CoCLR's ranking network) or its key network
        (`ema_encoder`)."""
        if encoder == "encoder":
            return cls(params=state.params, batch_stats=state.batch_stats)
        if encoder == "ema_encoder":
            return cls(params=state.ema_params, batch_stats=state.ema_batch_stats)
        raise ValueError(f"encoder must be 'encoder' or 'ema_encoder', got {encoder!r}")


def create_train_state(
    model,
    optimizer: optax.GradientTransformation,
    rng,
    clip_shape: tuple[int, int, int, int],
    queue_size: int,
    global_batch: int,
) -> TrainState:
    """Fresh state: random f_q, f_k = f_q, a random queue. clip_shape: (T, H, W, 3).

    Wrap in `jax.jit(..., out_shardings=...)` to create it directly sharded (see sharding.py).
    """
    k_init = jax.random.split(rng, 3)[0]
    variables = model.init(k_init, jnp.zeros((1, *clip_shape), jnp.float32), train=False)
    encoder = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    key_encoder = jax.tree.map(jnp.copy, encoder)
    return state_around(encoder, key_encoder, optimizer, rng, queue_size, model.embed_dim, global_batch)


def state_around(
    encoder: dict,
    key_encoder: dict,
    optimizer: optax.GradientTransformation,
    rng,
    queue_size: int,
    embed_dim: int,
    global_batch: int,
) -> TrainState:
    """A fresh state around given query and key encoders ({'params', 'batch_stats'} each): step 0,
    a fresh optimiser and a random queue, drawn from `rng` as `create_train_state` draws them.

    Wrap in `jax.jit(..., out_shardings=...)`; the encoders' arrays are passed through.
    """
    _, k_queue, k_state = jax.random.split(rng, 3)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=encoder["params"],
        batch_stats=encoder["batch_stats"],
        ema_params=key_encoder["params"],
        ema_batch_stats=key_encoder["batch_stats"],
        opt_state=optimizer.init(encoder["params"]),
        queue=init_queue(k_queue, queue_size, embed_dim, global_batch),
        rng=jax.random.key_data(k_state),
    )


def state_sharding(mesh: Mesh, state: TrainState) -> TrainState:
    """Sharding pytree matching `state` (arrays or ShapeDtypeStructs): queue rows split."""
    rep = replicated(mesh)
    rows = batch_sharding(mesh)
    tree = jax.tree.map(lambda _: rep, state)
    return tree.replace(queue=Queue(keys=rows, other=rows, ids=rows, ptr=rep, fill=rep))


@dataclasses.dataclass(frozen=True)
class NewState:
    """A train state before it exists: `template` (its ShapeDtypeStructs with the mesh's
    shardings, what a checkpoint is restored into) and the two ways to make it. Nothing is compiled
    until one is called: a resumed stage needs neither, and a stage that starts from other encoders
    does not compile the whole network's initialisation only to replace it.

    random(): a random network (and key encoder, optimiser and queue) from the seed.
    around(encoder, key_encoder): a fresh optimiser and queue around given encoders.
    """

    template: TrainState
    random: Callable[[], TrainState]
    around: Callable[[dict, dict], TrainState]


def new_state(
    mesh: Mesh,
    model,
    optimizer: optax.GradientTransformation,
    clip_shape: tuple[int, int, int, int],
    queue_size: int,
    global_batch: int,
    seed: int,
) -> NewState:
    """The NewState of `model` trained by `optimizer` on `mesh`; clip_shape (T, H, W, 3)."""
    rng = jax.random.key(seed)

    def init(rng):
        return create_train_state(model, optimizer, rng, clip_shape, queue_size, global_batch)

    def around(encoder, key_encoder, rng):
        return state_around(encoder, key_encoder, optimizer, rng, queue_size, model.embed_dim, global_batch)

    shapes = jax.eval_shape(init, rng)
    shardings = state_sharding(mesh, shapes)
    template = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes, shardings
    )
    return NewState(
        template,
        random=lambda: jax.jit(init, out_shardings=shardings)(rng),
        around=lambda enc, key_enc: jax.jit(around, out_shardings=shardings)(enc, key_enc, rng),
    )
