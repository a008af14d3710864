"""Backbone features over evaluation batches: jitted, sharded over all devices, multi-host safe.

The evaluation pipeline yields padded batches with a `mask`; rows are gathered from every host
so each host ends with every real row exactly once, whatever the number of hosts or devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cvtcl_jax.models import S3D, normalize_frames
from cvtcl_jax.models.pooling import DEFAULT_POOL_GRAD
from cvtcl_jax.sharding import batch_sharding, replicated, shard_batch

META_KEYS = ("video_index", "label", "clip_start", "crop", "mask")
ROW_KEYS = ("features", "video_index", "label", "clip_start", "crop")


def backbone_from_config(model_cfg: Mapping) -> S3D:
    """The S3D of a ContrastiveEncoder config (its `backbone` variables apply to it)."""
    dtype = model_cfg.get("dtype", "float32")
    return S3D(
        width_multiplier=model_cfg["width_multiplier"],
        num_mixed_4=model_cfg["num_mixed_4"],
        bn_group_size=model_cfg.get("bn_group_size"),
        dtype=jax.numpy.dtype(dtype),
        # Only matter where the backbone is trained (finetuning).
        remat=model_cfg.get("remat", False),
        pool_grad=model_cfg.get("pool_grad", DEFAULT_POOL_GRAD),
        conv_lowering=model_cfg.get("conv_lowering", "fold"),
    )


def backbone_variables(encoder: Mapping) -> dict:
    """{'params', 'batch_stats'} of the backbone inside a ContrastiveEncoder's variables."""
    return {"params": encoder["params"]["backbone"], "batch_stats": encoder["batch_stats"]["backbone"]}


def sharded_batch_fn(fn: Callable, mesh: Mesh) -> Callable:
    """jit of fn(variables, clips) -> per-row outputs: batch split over the mesh, variables replicated."""
    return jax.jit(
        fn, in_shardings=(replicated(mesh), batch_sharding(mesh)), out_shardings=batch_sharding(mesh)
    )


def make_feature_fn(backbone: S3D, mesh: Mesh) -> Callable:
    """jit of (backbone variables, clips (B, T, H, W, 3) uint8) -> (B, 1024) pooled features,
    inference-mode BN, float32; batch split over the mesh, variables replicated."""

    def features(variables, clips):
        return backbone.apply(variables, normalize_frames(clips), train=False).astype(jax.numpy.float32)

    return sharded_batch_fn(features, mesh)


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

    empty: an all-masked batch of the same shapes (`random_batches.empty_eval_batch`), fed by
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
