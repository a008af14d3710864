"""Train steps on emulated devices: device-count independence, queue, co-training, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cvtcl_jax.sharding import check_global_batch, copied, make_mesh, shard_batch
from cvtcl_jax.state import FrozenEncoder, state_sharding
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step
from tests import tiny

# A softer temperature and faster EMA than the paper's: the tiny model must learn in 48 steps.
CFG = ContrastConfig(top_k=3, tau=0.2, momentum=0.9)


@pytest.fixture(scope="module")
def videos():
    # More videos than the queue and a batch hold, so a video's own older key is never a negative.
    return tiny.make_videos(96)


@pytest.fixture(scope="module")
def mesh8():
    assert jax.device_count() == 8
    return make_mesh()


@pytest.fixture(scope="module")
def init_step8(mesh8):
    shapes = tiny.state_shapes()
    step = make_train_step(tiny.MODEL, CFG, tiny.OPTIMIZER, tiny.SCHEDULE)
    return jit_train_step(step, mesh8, shapes)


def run(step, mesh, state, batches, *extra):
    metrics = []
    for batch in batches:
        state, m = step(state, shard_batch(mesh, batch), *extra)
        metrics.append(jax.device_get(m))
    return state, metrics


@pytest.mark.slow
def test_init_step_is_the_same_on_1_and_8_devices(videos):
    """Same global batches, same start: same losses, parameters, BN statistics and queue.

    Computed in float64 (parameters too): in float32, Adam's first steps (update ~ lr * sign(g)
    where |g| is tiny) turn the rounding differences of another reduction order into lr-sized
    parameter differences, which would hide real errors behind a loose tolerance.
    """
    rng = np.random.default_rng(0)
    batches = [tiny.sample_batch(rng, videos, np.arange(16) + 16 * i, False) for i in range(2)]
    results = []
    with jax.enable_x64(True):
        # One start, placed on each mesh (one initialisation to compile, not two).
        start = jax.device_get(tiny.make_state(make_mesh(jax.devices()[:1]), model=tiny.MODEL64))
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = make_mesh(devices)
            step = jit_train_step(
                make_train_step(tiny.MODEL64, CFG, tiny.OPTIMIZER, tiny.SCHEDULE),
                mesh,
                tiny.state_shapes(),
            )
            state = jax.device_put(start, state_sharding(mesh, start))
            state, metrics = run(step, mesh, state, batches)
            results.append((jax.device_get(state), metrics))
    (s1, m1), (s8, m8) = results
    for a, b in zip(m1, m8, strict=True):
        assert a.keys() == b.keys() >= {"loss", "loss_infonce", "loss_local", "loss_lt", "inst_top1"}
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-12, err_msg=key)
    # Adam divides by sqrt(v) + eps, so a component whose gradient is ~eps moves by a
    # precision-sensitive fraction of lr; 1e-8 = 1e-5 * lr still catches any real discrepancy.
    for tree in ("params", "ema_params", "batch_stats", "ema_batch_stats", "queue"):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-8),
            getattr(s1, tree),
            getattr(s8, tree),
        )
    assert int(s8.step) == 2
    assert not np.allclose(
        s8.params["head"]["fc1"]["kernel"], tiny.make_state(make_mesh()).params["head"]["fc1"]["kernel"]
    )


@pytest.mark.slow
def test_queue_wraps_and_stays_sharded_through_donated_steps(videos, mesh8, init_step8):
    rng = np.random.default_rng(1)
    state = tiny.make_state(mesh8)
    for i in range(5):  # 5 batches of 16 into a queue of 64: the fifth overwrites rows 0-15
        old = state
        batch = tiny.sample_batch(rng, videos, np.arange(16), False)
        batch["ids"] = np.arange(16, dtype=np.int32) + 100 * i
        state, metrics = init_step8(state, shard_batch(mesh8, batch))
        assert old.queue.keys.is_deleted(), "the state should be donated to the step"
    expected = np.concatenate([np.arange(16) + 100 * i for i in (4, 1, 2, 3)])
    np.testing.assert_array_equal(state.queue.ids, expected)
    assert int(state.queue.ptr) == 16 and int(state.queue.fill) == 64
    assert float(metrics["queue_fill"]) == 1.0
    assert state.queue.keys.sharding.spec == P("data")
    assert state.queue.ids.sharding.spec == P("data")
    assert len(state.queue.keys.sharding.device_set) == 8
    np.testing.assert_allclose(jnp.linalg.norm(state.queue.keys, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_cotrain_step_is_forward_only_until_the_queue_is_full(videos, mesh8, init_step8):
    rng = np.random.default_rng(2)
    state = tiny.make_state(mesh8)
    state, _ = init_step8(state, shard_batch(mesh8, tiny.sample_batch(rng, videos, np.arange(16), False)))
    frozen = copied(FrozenEncoder.from_state(state))
    state = state.replace(queue=copied(tiny.make_state(mesh8, seed=5).queue))
    step = jit_train_step(
        make_train_step(tiny.MODEL, CFG, tiny.OPTIMIZER, tiny.SCHEDULE, other_model=tiny.MODEL),
        mesh8,
        jax.eval_shape(lambda: state),
        cotrain=True,
    )
    params0 = jax.device_get(state.params)
    ema0 = jax.device_get(state.ema_params)
    ids = np.arange(16)  # the same 16 videos every step: 4 same-source entries once full
    for _ in range(4):
        state, m = step(state, shard_batch(mesh8, tiny.sample_batch(rng, videos, ids)), frozen)
        assert float(m["updated"]) == 0.0 and float(m["mined_positives"]) == 0.0
        assert int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params0)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params), ema0)
    for _ in range(2):
        state, m = step(state, shard_batch(mesh8, tiny.sample_batch(rng, videos, ids)), frozen)
        assert float(m["updated"]) == 1.0
        # 4 earlier batches of the same ids are same-source positives, plus top_k mined ones.
        assert float(m["mined_positives"]) == 4 + CFG.top_k
        assert np.isfinite(m["loss_rf"]) and np.isfinite(m["loss_ltcl"])
    assert int(state.step) == 3
    assert not np.allclose(
        jax.device_get(state.params)["head"]["fc2"]["kernel"], params0["head"]["fc2"]["kernel"]
    )
    np.testing.assert_allclose(jnp.linalg.norm(state.queue.other, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_instance_discrimination_is_learned(videos, mesh8, init_step8):
    """A few dozen steps on moving textures lift own-key-vs-queue top-1 far above chance."""
    rng = np.random.default_rng(3)
    state = tiny.make_state(mesh8, seed=1)
    top1, loss = [], []
    for i in range(48):  # fixed order: a video's previous key has left the queue when it returns
        batch = tiny.sample_batch(rng, videos, np.arange(16) + 16 * (i % 6), False)
        state, m = init_step8(state, shard_batch(mesh8, batch))
        top1.append(float(m["inst_top1"]))
        loss.append(float(m["loss_infonce"]))
    chance = 1 / (tiny.QUEUE + 1)
    first, last = np.mean(top1[:12]), np.mean(top1[-12:])
    assert last > 0.25 > 15 * chance, (first, last)
    assert last > first + 0.15, (first, last)
    # Loss against its value once the queue is full: it fills during the first QUEUE / BATCH steps,
    # whose fewer negatives give lower losses.
    full = tiny.QUEUE // tiny.BATCH
    assert np.mean(loss[-12:]) < np.mean(loss[full : full + 12]) - 0.25, loss


@pytest.mark.slow
def test_bfloat16_training_tracks_float32(videos, mesh8, init_step8):
    """Mixed precision (bf16 convolutions; float32 master weights, BN statistics, head and losses):
    from the same start on the same batches, each step's loss stays within 6% of float32's (the
    same comparison on other batches of these videos differed by 2.9% at most over 6 steps, 4.6%
    over 16)."""
    bf16 = tiny.MODEL.clone(dtype=jnp.bfloat16)
    step16 = make_train_step(bf16, CFG, tiny.OPTIMIZER, tiny.SCHEDULE)
    step16 = jit_train_step(step16, mesh8, tiny.state_shapes())
    rng = np.random.default_rng(4)
    batches = [tiny.sample_batch(rng, videos, np.arange(16) + 16 * i, False) for i in range(6)]
    state32, state16 = tiny.make_state(mesh8, seed=1), tiny.make_state(mesh8, seed=1, model=bf16)
    jax.tree.map(np.testing.assert_array_equal, state16.params, state32.params)
    state32, m32 = run(init_step8, mesh8, state32, batches)
    state16, m16 = run(step16, mesh8, state16, batches)
    loss32 = np.array([m["loss"] for m in m32])
    loss16 = np.array([m["loss"] for m in m16])
    assert all(m["loss"].dtype == np.float32 for m in m16)
    masters = (state16.params, state16.ema_params, state16.batch_stats)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(masters))
    assert state16.queue.keys.dtype == jnp.float32
    rel = np.abs(loss16 - loss32) / loss32
    assert 0 < rel[0] and rel.max() < 0.06, (loss32, loss16)


def test_bad_configuration_is_rejected(mesh8):
    with pytest.raises(ValueError, match="tau"):
        ContrastConfig(tau=0.0)
    with pytest.raises(ValueError, match="self_pos_dropout"):
        ContrastConfig(self_pos_dropout=1.5)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        check_global_batch(12, mesh8)
    assert not ContrastConfig(beta=0.0).use_ltcl
    assert not ContrastConfig(local_weight=0.0, lt_weight=0.0).use_ltcl


def test_copied_trees_keep_shardings_on_buffers_of_their_own(mesh8, caplog):
    """A frozen encoder copied out of a state that is then donated (the co-training step tests, the
    bench): equal values, the same shardings, buffers that outlive the originals, nothing compiled."""
    rng = np.random.default_rng(0)
    rows, kernel = rng.standard_normal((64, 32)), rng.standard_normal((3, 3, 16))
    tree = {  # a queue's rows split over the devices, a replicated parameter and a scalar
        "keys": jax.device_put(rows.astype(np.float32), NamedSharding(mesh8, P("data"))),
        "params": {"kernel": jax.device_put(kernel.astype(np.float32), NamedSharding(mesh8, P()))},
        "ptr": jax.device_put(np.int32(16), NamedSharding(mesh8, P())),
    }
    with jax.log_compiles(True):
        copy = copied(tree)
        jax.block_until_ready(copy)
    assert not [r for r in caplog.records if "ompil" in r.getMessage()]
    want = jax.device_get(tree)
    same_sharding = lambda a, b: a.sharding == b.sharding  # noqa: E731
    assert all(jax.tree.leaves(jax.tree.map(same_sharding, copy, tree)))
    jax.tree.map(lambda x: x.delete(), tree)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(copy), want)
