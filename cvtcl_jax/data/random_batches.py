"""Random batches with the pipeline's shapes and dtypes, for hosts without TensorFlow (benchmarks)."""

from __future__ import annotations

import numpy as np

from cvtcl_jax.data import device_augment
from cvtcl_jax.data.clip_spec import ClipSpec


def random_color_params(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """(*shape, 12) float32 colour parameters in device_augment's layout: random flags, sigma in
    [0.1, 2], factors in docs/method.md §5's ranges, a random order of the four jitter operations."""
    flags = rng.integers(0, 2, (*shape, 3))
    sigma = rng.uniform(0.1, 2.0, (*shape, 1))
    factors = rng.uniform([0.6, 0.6, 0.6, -0.1], [1.4, 1.4, 1.4, 0.1], (*shape, 4))
    order = np.argsort(rng.random((*shape, 4)), axis=-1)
    return np.concatenate([flags, sigma, factors, order], axis=-1).astype(np.float32)


def random_window_params(rng: np.random.Generator, frame_hw: tuple[int, int], *shape: int) -> np.ndarray:
    """(*shape, 6) int32 windows in device_augment's layout: a random crop of 20-100% of each side
    of a (H, W) frame, a random flip, not flow."""
    h, w = frame_hw
    sizes = np.stack([rng.integers(max(1, n // 5), n + 1, shape) for n in (h, w)], axis=-1)
    corners = np.floor(rng.random((*shape, 2)) * (np.array([h, w]) - sizes + 1)).astype(int)
    flags = np.stack([rng.integers(0, 2, shape), np.zeros(shape, int)], -1)
    return np.concatenate([corners, sizes, flags], axis=-1).astype(np.int32)


def random_pretrain_batch(
    rng: np.random.Generator,
    batch: int,
    spec: ClipSpec,
    cotrain: bool,
    on_device: str = "none",
    frame_hw: tuple[int, int] = (128, 171),
) -> dict:
    """A pretraining batch like `training_clips.pretrain_dataset` yields with `data.aug.on_device`
    ('none', 'color' or 'resize'): uint8 clips, int32 ids, and with 'color' / 'resize' the
    `<clip>_color` parameters of the trained view's clips (the other view is flow, which gets
    none); with 'resize' the clips are whole (H, W) = frame_hw frames with their `<clip>_window`,
    and the anchor's frames are not shipped."""
    t = spec.num_frames
    hw = frame_hw if on_device == "resize" else (spec.crop_size, spec.crop_size)

    def clips(*shape):
        return rng.integers(0, 256, size=(*shape, *hw, 3), dtype=np.uint8)

    out = {
        "query": clips(batch, t),
        "key": clips(batch, t),
        "ids": np.arange(batch, dtype=np.int32),
        "padded": np.zeros(batch, bool),
    }
    lead = {"query": (batch,), "key": (batch,)}
    if spec.num_segments:
        if on_device != "resize":
            out["anchor"] = clips(batch, spec.segment_len)
        out["segments"] = clips(batch, spec.num_segments, spec.segment_len)
        lead.update(anchor=(batch,), segments=(batch, spec.num_segments))
    for key, shape in lead.items():
        if on_device != "none":
            out[device_augment.color_key(key)] = random_color_params(rng, *shape)
        if on_device == "resize":
            out[device_augment.window_key(key)] = random_window_params(rng, frame_hw, *shape)
    if cotrain:
        out["other_key"] = clips(batch, t)
        if on_device == "resize":  # the key's frames, crop and flip in the other view (flow)
            window = out[device_augment.window_key("key")].copy()
            window[:, device_augment.WIN_FLOW] = 1
            out[device_augment.window_key("other_key")] = window
    return out
