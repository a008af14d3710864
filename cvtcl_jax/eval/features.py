"""Backbone features over evaluation batches: jitted, sharded over all devices, multi-host safe.

The evaluation pipeline yields padded batches with a `mask`; rows are gathered from every host
so each host ends with every real row exactly once, whatever the number of hosts or devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.models import S3D
from cvtcl_jax.sharding import batch_sharding, replicated, shard_batch

META_KEYS = ("video_index", "label", "clip_start", "crop", "mask")
ROW_KEYS = ("features", "video_index", "label", "clip_start", "crop")


def sharded_batch_fn(fn: Callable, mesh: Mesh) -> Callable:
    """jit of fn(variables, clips) -> per-row outputs: batch split over the mesh, variables replicated."""
    return jax.jit(
        fn, in_shardings=(replicated(mesh), batch_sharding(mesh)), out_shardings=batch_sharding(mesh)
    )


def make_feature_fn(backbone: S3D, mesh: Mesh) -> Callable:
    """jit of (backbone variables, clips (B, T, H, W, 3) uint8) -> (B, 1024) pooled features,
    inference-mode BN, float32; batch split over the mesh, variables replicated."""

    def features(variables, clips):
        return backbone.apply(variables, clips, train=False).astype(jax.numpy.float32)

    return sharded_batch_fn(features, mesh)


def empty_batch(local_batch: int, spec: ClipSpec, views) -> dict:
    """An evaluation batch with every row masked out, for hosts that ran out of data first."""
    t, s = spec.num_frames, spec.crop_size
    out = {view: np.zeros((local_batch, t, s, s, 3), np.uint8) for view in views}
    for key in ("video_index", "label", "clip_start", "crop"):
        out[key] = np.zeros(local_batch, np.int32)
    out["mask"] = np.zeros(local_batch, bool)
    return out


def _synced(batches: Iterator[dict], empty: dict) -> Iterator[dict]:
    """Yields until every host is done; a host that ran out feeds fully masked batches meanwhile,
    because each host must join every call of the global jitted function."""
    while True:
        batch = next(batches, None)
        if jax.process_count() == 1:
            if batch is None:
                return
            yield batch
            continue
        active = multihost_utils.process_allgather(np.asarray(batch is not None))
        if not np.any(active):
            return
        yield empty if batch is None else batch


def extract(
    feature_fn: Callable, variables, batches: Iterable[dict], mesh: Mesh, view: str, empty: dict
) -> dict[str, np.ndarray]:
    """Runs `feature_fn` (per-row outputs: features, or class probabilities) over evaluation
    batches of one view.

    empty: an all-masked batch of the same shapes (`empty_batch`), fed by
    hosts that finished early. Returns the real rows of all hosts: {'features' (N, F),
    'video_index', 'label', 'clip_start', 'crop' (N,)} (ROW_KEYS).
    """
    variables = jax.device_put(variables, replicated(mesh))
    rows: dict[str, list] = {k: [] for k in ROW_KEYS}
    for batch in _synced(iter(batches), empty):
        on_device = shard_batch(mesh, {view: batch[view], **{k: batch[k] for k in META_KEYS}})
        feats = feature_fn(variables, on_device[view])
        # tiled: the global arrays span every host; this gives each host the whole global batch.
        gathered = multihost_utils.process_allgather(
            {"features": feats, **{k: on_device[k] for k in META_KEYS}}, tiled=True
        )
        keep = np.asarray(gathered["mask"], bool)
        for key in rows:
            rows[key].append(np.asarray(gathered[key])[keep])
    if not rows["features"]:
        raise ValueError(f"no evaluation batches for view {view!r}: is the subset empty?")
    return {k: np.concatenate(v) for k, v in rows.items()}
