"""Tiny model, optimiser and synthetic moving-texture batches shared by the train-step tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cvtcl_jax import optim
from cvtcl_jax.models import ContrastiveEncoder
from cvtcl_jax.state import create_train_state, state_sharding

BATCH, FRAMES, SIZE, SEGMENTS, SEG_LEN, QUEUE = 16, 8, 32, 2, 8, 64
VIDEO_LEN, CANVAS = 32, 40

# The smallest S3D: one Mixed block per stage (its parts, and every kind of pool, stay), so the
# many programs the tests compile take about a quarter less time than with the paper's blocks.
SMALLEST = dict(num_mixed_3=1, num_mixed_4=1, num_mixed_5=1)
# The tests' encoder (tests/tiny_config.py's too). Width 1/4: the narrowest S3D that learns
# instance discrimination in a few dozen CPU steps. BN groups of 8 clips span 4 of the 8 emulated
# devices.
MODEL_SETTINGS = dict(width_multiplier=0.25, **SMALLEST, bn_group_size=8, head_hidden_dim=64, embed_dim=32)
MODEL = ContrastiveEncoder(**MODEL_SETTINGS)
# The same network computing in float64, for exact comparisons across device counts.
MODEL64 = MODEL.clone(dtype=jnp.float64, param_dtype=jnp.float64)
SCHEDULE = optim.step_decay_schedule(3e-3, steps_per_epoch=10, decay_epochs=(100,))
OPTIMIZER = optim.adam_l2(SCHEDULE, 1e-4)


def _init(rng, model=MODEL):
    return create_train_state(model, OPTIMIZER, rng, (FRAMES, SIZE, SIZE, 3), QUEUE, BATCH)


def state_shapes():
    """ShapeDtypeStructs of the tiny train state (fixes the pytree for jit_train_step)."""
    return jax.eval_shape(_init, jax.random.key(0))


def make_state(mesh, seed=0, model=MODEL):
    """Fresh tiny train state created directly with the mesh's shardings."""
    init = jax.jit(lambda rng: _init(rng, model), out_shardings=state_sharding(mesh, state_shapes()))
    return init(jax.random.key(seed))


def make_videos(n, seed=0):
    """n videos (n, VIDEO_LEN, CANVAS, CANVAS, 3): random textures and colours, moving steadily."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS
    videos = np.empty((n, VIDEO_LEN, CANVAS, CANVAS, 3), np.float32)
    for i in range(n):
        tex = np.zeros((CANVAS, CANVAS, 3)) + rng.normal(0, 1, 3)
        for _ in range(4):
            fy, fx = rng.integers(1, 4, 2)
            phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0, 3)
            tex += amp * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)[..., None]
        vy, vx = rng.integers(-2, 3, 2)
        for t in range(VIDEO_LEN):
            videos[i, t] = np.roll(tex, (t * vy, t * vx), axis=(0, 1))
    return videos


def _augment(rng, frames):
    """Random 32x32 crop and brightness/contrast jitter, constant over the frames."""
    y, x = rng.integers(0, CANVAS - SIZE + 1, 2)
    out = frames[:, y : y + SIZE, x : x + SIZE]
    return (out * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)).astype(np.float32)


def sample_batch(rng, videos, index, other_view=True):
    """Pretraining batch of the videos `index` (B,) in the layout the train steps expect."""
    q, k, anchor, segments, other = [], [], [], [], []
    for i in index:
        v = videos[i]
        tq, tk = rng.integers(0, VIDEO_LEN - FRAMES + 1, 2)
        q.append(_augment(rng, v[tq : tq + FRAMES]))
        k.append(_augment(rng, v[tk : tk + FRAMES]))
        other.append(_augment(rng, -v[tk : tk + FRAMES]))
        start = rng.integers(0, VIDEO_LEN - SEGMENTS * SEG_LEN + 1)
        segs = [v[start + s * SEG_LEN : start + (s + 1) * SEG_LEN] for s in range(SEGMENTS)]
        anchor.append(_augment(rng, segs[0]))
        segments.append(np.stack([_augment(rng, s) for s in segs]))
    batch = {
        "query": np.stack(q),
        "key": np.stack(k),
        "ids": np.asarray(index, np.int32),
        "anchor": np.stack(anchor),
        "segments": np.stack(segments),
    }
    if other_view:
        batch["other_key"] = np.stack(other)
    return batch
