"""Random batches with the pipeline's shapes and dtypes, for hosts without TensorFlow (benchmarks)."""

from __future__ import annotations

import numpy as np

from cvtcl_jax.data.clip_spec import ClipSpec


def random_color_params(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """(*shape, 12) float32 colour parameters in device_augment's layout: random flags, sigma in
    [0.1, 2], factors in SPEC 5's ranges, a random order of the four jitter operations."""
    flags = rng.integers(0, 2, (*shape, 3))
    sigma = rng.uniform(0.1, 2.0, (*shape, 1))
    factors = rng.uniform([0.6, 0.6, 0.6, -0.1], [1.4, 1.4, 1.4, 0.1], (*shape, 4))
    order = np.argsort(rng.random((*shape, 4)), axis=-1)
    return np.concatenate([flags, sigma, factors, order], axis=-1).astype(np.float32)


def random_pretrain_batch(
    rng: np.random.Generator, batch: int, spec: ClipSpec, cotrain: bool, colour: bool = False
) -> dict:
    """A pretraining batch like `pipeline.pretrain_dataset` yields: uint8 clips, int32 ids.

    colour: also the `<clip>_color` parameters of the trained view's clips, as with
    `data.aug.on_device` (the other view is flow, which gets none)."""
    t, s = spec.num_frames, spec.crop_size

    def clips(*shape):
        return rng.integers(0, 256, size=(*shape, s, s, 3), dtype=np.uint8)

    out = {
        "query": clips(batch, t),
        "key": clips(batch, t),
        "ids": np.arange(batch, dtype=np.int32),
        "padded": np.zeros(batch, bool),
    }
    if spec.num_segments:
        out["anchor"] = clips(batch, spec.segment_len)
        out["segments"] = clips(batch, spec.num_segments, spec.segment_len)
    if colour:
        for key in ("query", "key", "anchor", "segments"):
            if key in out:
                out[key + "_color"] = random_color_params(rng, *out[key].shape[:-4])
    if cotrain:
        out["other_key"] = clips(batch, t)
    return out


def empty_eval_batch(local_batch: int, spec: ClipSpec, views) -> dict:
    """An evaluation batch with every row masked out, for hosts that ran out of data first."""
    t, s = spec.num_frames, spec.crop_size
    out = {view: np.zeros((local_batch, t, s, s, 3), np.uint8) for view in views}
    for key in ("video_index", "label", "clip_start", "crop"):
        out[key] = np.zeros(local_batch, np.int32)
    out["mask"] = np.zeros(local_batch, bool)
    return out
