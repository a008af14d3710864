"""Random batches with the pipeline's shapes and dtypes, for hosts without TensorFlow (benchmarks)."""

from __future__ import annotations

import numpy as np

from cvtcl_jax.data.clip_spec import ClipSpec


def random_pretrain_batch(rng: np.random.Generator, batch: int, spec: ClipSpec, cotrain: bool) -> dict:
    """A pretraining batch like `pipeline.pretrain_dataset` yields: uint8 clips, int32 ids."""
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
