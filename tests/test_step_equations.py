"""One whole initialization step and one whole co-training step against a float64 recomputation
from docs/method.md §3's equations: the network is used as a black-box function, everything around it
(EMA, key and segment embeddings, Eqs. (1)-(7), top-K mining in NumPy, self-positive dropout,
Adam with L2 decay, the queue write) is written here again without the library's code.

BN statistics are taken over the whole batch (`bn_group_size=None`), so the key encoder's
shuffle cannot change its output and the recomputation needs none of the step's random draws.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.state import FrozenEncoder, state_sharding
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step
from tests import tiny

pytestmark = pytest.mark.slow  # two float64 steps and their recomputation compile for minutes

MODEL = tiny.MODEL64.clone(bn_group_size=None)
B, K, S = tiny.BATCH, tiny.QUEUE, tiny.SEGMENTS
# p = 1: the dropout fires every step, so each row with mined positives loses its own key.
CFG = ContrastConfig(tau=0.2, momentum=0.9, alpha=1.0, beta=0.7, lt_weight=0.5, top_k=3, self_pos_dropout=1.0)
ADAM_B1, ADAM_B2, ADAM_EPS, WEIGHT_DECAY = 0.9, 0.999, 1e-8, 1e-4  # tiny.OPTIMIZER: optax.adam defaults


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _start(cotrain: bool):
    """A host state whose EMA differs from the query encoder, a full queue written up to row 16,
    and a batch of float clips whose ids share sources with some queue entries."""
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        state = jax.device_get(tiny.make_state(make_mesh(jax.devices()[:1]), model=MODEL))
    # The key encoder moved away from the query encoder (as after training), BN statistics too.
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape), state.params)
    stats = jax.tree.map(lambda v: v + 0.1 * rng.uniform(0, 1, v.shape), state.batch_stats)
    ids = rng.integers(0, 40, B).astype(np.int32)
    queue_ids = rng.integers(0, 40, K).astype(np.int32)
    queue_ids[[1, 5, 9]] = ids[[0, 0, 3]]  # same-source entries: positives of rows 0 and 3
    queue = state.queue.replace(
        keys=_unit(rng.standard_normal(state.queue.keys.shape)).astype(np.float32),
        other=_unit(rng.standard_normal(state.queue.other.shape)).astype(np.float32),
        ids=queue_ids,
        ptr=np.int32(16),
        fill=np.int32(K),
    )
    state = state.replace(params=params, ema_batch_stats=stats, queue=queue)
    clip = (tiny.FRAMES, tiny.SIZE, tiny.SIZE, 3)
    batch = {
        "query": rng.standard_normal((B, *clip)),
        "key": rng.standard_normal((B, *clip)),
        "ids": ids,
        "anchor": rng.standard_normal((B, tiny.SEG_LEN, *clip[1:])),
        "segments": rng.standard_normal((B, S, tiny.SEG_LEN, *clip[1:])),
    }
    if cotrain:
        batch["other_key"] = rng.standard_normal((B, *clip))
    return state, batch


def _run_step(state, batch, frozen=None):
    mesh = make_mesh()
    cotrain = frozen is not None
    step = make_train_step(MODEL, CFG, tiny.OPTIMIZER, tiny.SCHEDULE, other_model=MODEL if cotrain else None)
    jitted = jit_train_step(step, mesh, state, cotrain=cotrain)
    state = jax.device_put(state, state_sharding(mesh, state))
    new_state, metrics = jitted(state, batch, *((frozen,) if cotrain else ()))
    return jax.device_get(new_state), jax.device_get(metrics)


@functools.partial(jax.jit, static_argnames="train")
def _forward(params, stats, clips, train=True):
    """The network as a function: -> (embeddings, updated BN statistics)."""
    variables = {"params": params, "batch_stats": stats}
    if not train:
        return MODEL.apply(variables, clips, train=False)[1], stats
    (_, z), updates = MODEL.apply(variables, clips, train=True, mutable=["batch_stats"])
    return z, updates["batch_stats"]


def _nce(pos, neg):
    """-log(e^pos / (e^pos + sum e^neg)) per row; pos (...,), neg (..., N)."""
    return -pos + jnp.log(jnp.exp(pos) + jnp.sum(jnp.exp(neg), axis=-1))


def _recompute(state, batch, frozen=None):
    """The step from the equations. -> (losses, new params, new BN stats, EMA, queue rows, mined)."""
    tau, m = CFG.tau, CFG.momentum
    # EMA first (MoCo), then the keys and the LTCL segments through the new key encoder.
    ema = jax.tree.map(lambda e, p: m * e + (1 - m) * p, state.ema_params, state.params)
    k, ema_stats = _forward(ema, state.ema_batch_stats, batch["key"])
    seg = batch["segments"]
    zs, ema_stats = _forward(ema, ema_stats, seg.reshape((B * S, *seg.shape[2:])))
    zs = zs.reshape((B, S, -1))
    queue = np.asarray(state.queue.keys, np.float64)

    positives = None
    if frozen is not None:
        # The key clip in the other view, through the frozen network in inference mode, ranks the
        # queue's other-view entries; same-source entries are positives and not ranked.
        other_z = np.asarray(_forward(frozen.params, frozen.batch_stats, batch["other_key"], train=False)[0])
        scores = other_z @ np.asarray(state.queue.other, np.float64).T
        positives = np.zeros((B, K), bool)
        for b in range(B):
            same = state.queue.ids == batch["ids"][b]
            ranked = [n for n in np.argsort(-scores[b], kind="stable") if not same[n]]
            positives[b] = same
            positives[b, ranked[: CFG.top_k]] = True
        keep_self = ~positives.any(axis=1)  # p = 1: dropped wherever another positive exists

    def loss_fn(params):
        q, stats = _forward(params, state.batch_stats, batch["query"])
        logits = jnp.concatenate([jnp.sum(q * k, -1, keepdims=True), q @ queue.T], axis=-1) / tau
        if frozen is None:
            glob = _nce(logits[:, 0], logits[:, 1:])  # Eq. (1)
        else:  # Eqs. (2)/(4): all positives in the numerator, everything in the denominator
            mask = np.concatenate([keep_self[:, None], positives], axis=1)
            glob = -jnp.log(jnp.sum(jnp.where(mask, jnp.exp(logits), 0), -1) / jnp.sum(jnp.exp(logits), -1))
        z1, stats = _forward(params, stats, batch["anchor"])
        pos = jnp.einsum("bd,bsd->bs", z1, zs) / tau
        neg = jnp.broadcast_to((z1 @ queue.T / tau)[:, None], (B, S, K))
        local = jnp.mean(_nce(pos, neg), axis=1)  # Eq. (6)
        lt = _nce(pos[:, 0], pos[:, 1:])  # Eq. (7)
        ltcl = CFG.local_weight * jnp.mean(local) + CFG.lt_weight * jnp.mean(lt)
        loss = CFG.alpha * jnp.mean(glob) + CFG.beta * ltcl
        return loss, (
            stats,
            {"global": jnp.mean(glob), "loss_local": jnp.mean(local), "loss_lt": jnp.mean(lt)},
        )

    (loss, (stats, terms)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)
    # torch.optim.Adam(weight_decay) at step 1: L2 term added to the gradient, bias-corrected moments.
    # In NumPy: JAX would compile each operation for each parameter shape, hundreds of programs.
    grads = jax.device_get(grads)
    lr = float(tiny.SCHEDULE(0))

    def adam(p, g):
        g = g + WEIGHT_DECAY * p
        m_hat = (1 - ADAM_B1) * g / (1 - ADAM_B1)
        v_hat = (1 - ADAM_B2) * g**2 / (1 - ADAM_B2)
        return p - lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS)

    params = jax.tree.map(adam, state.params, grads)
    other_rows = other_z if frozen is not None else np.zeros_like(k)
    return {
        "loss": loss,
        **terms,
        "params": params,
        "batch_stats": stats,
        "ema": ema,
        "ema_stats": ema_stats,
        "queue_rows": (np.asarray(k), other_rows),
        "positives": positives,
    }


def _same(actual, expected, rtol=1e-9, atol=1e-12):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected)


@pytest.mark.parametrize("cotrain", [False, True], ids=["init", "cotrain"])
def test_one_step_is_the_equations(cotrain):
    with jax.enable_x64(True):
        state, batch = _start(cotrain)
        frozen = None
        if cotrain:  # another network, with BN statistics that make inference mode matter
            other = jax.device_get(tiny.make_state(make_mesh(jax.devices()[:1]), seed=3, model=MODEL))
            frozen = FrozenEncoder(
                params=other.params, batch_stats=jax.tree.map(lambda v: v + 0.3, other.batch_stats)
            )
        want = _recompute(state, batch, frozen)
        got, metrics = _run_step(state, batch, frozen)

    glob = "loss_rf" if cotrain else "loss_infonce"
    for name, value in (("loss", want["loss"]), (glob, want["global"])):
        np.testing.assert_allclose(metrics[name], value, rtol=1e-10, err_msg=name)
    for name in ("loss_local", "loss_lt"):
        np.testing.assert_allclose(metrics[name], want[name], rtol=1e-10, err_msg=name)
    _same(got.ema_params, want["ema"])
    _same(got.ema_batch_stats, want["ema_stats"])
    _same(got.batch_stats, want["batch_stats"])
    # Adam's first step is lr * g / (|g| + eps): components whose gradient is near eps move by a
    # precision-sensitive fraction of lr; 1e-9 (lr 3e-3) still catches any wrong gradient.
    _same(got.params, want["params"], rtol=1e-7, atol=1e-9)
    assert int(got.step) == 1

    # The queue: this batch written at the old pointer after the logits used the old entries.
    q0, q1 = state.queue, got.queue
    rows = slice(16, 16 + B)
    keys, other = want["queue_rows"]
    np.testing.assert_allclose(q1.keys[rows], keys, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(q1.other[rows], other, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(q1.ids[rows], batch["ids"])
    untouched = np.r_[0:16, 16 + B : K]
    np.testing.assert_array_equal(q1.keys[untouched], q0.keys[untouched])
    assert int(q1.ptr) == (16 + B) % K and int(q1.fill) == K
    if cotrain:
        positives = want["positives"]
        assert positives[0, [1, 5]].all() and positives[3, 9]  # same-source entries count
        assert metrics["mined_positives"] == pytest.approx(positives.sum(1).mean())
        assert metrics["self_positive_dropped"] == 1.0
