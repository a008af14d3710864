"""Checks of a config against the devices, the data and earlier stages, before any work starts.

Every failure is a ConfigError whose message names the value seen and what to change.
"""

from __future__ import annotations

from pathlib import Path

import jax

from cvtcl_jax import checkpoints
from cvtcl_jax.data.augment import AugmentConfig, check_eval_crops
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import VIEWS, DatasetError, load_dataset_info
from cvtcl_jax.models.s3d import feature_map_size
from cvtcl_jax.queue import check_queue_size
from cvtcl_jax.steps import ContrastConfig

SHAPE_KEYS = ("width_multiplier", "num_mixed_4", "head_hidden_dim", "embed_dim")


class ConfigError(ValueError):
    """The config cannot work; the message says what to change."""


def _wrap(fn, *args, prefix: str = "", **kwargs):
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, KeyError, checkpoints.CheckpointError, DatasetError) as e:
        raise ConfigError(f"{prefix}{e}") from e


def check_batch(config) -> None:
    """Global batch vs devices, hosts, BN groups and the queue."""
    b, n_dev, n_proc = config.global_batch, jax.device_count(), jax.process_count()
    if b <= 0 or b % n_dev:
        raise ConfigError(
            f"global_batch={b} is not divisible by the {n_dev} devices in use; set --config.global_batch "
            f"to a multiple of {n_dev} (e.g. {max(1, b // n_dev) * n_dev or n_dev})"
        )
    if b % n_proc:
        raise ConfigError(f"global_batch={b} is not divisible by the {n_proc} processes (hosts)")
    group = config.model.bn_group_size
    if group and b % group:
        raise ConfigError(
            f"global_batch={b} is not a multiple of model.bn_group_size={group} (BN statistics are taken "
            f"over groups of {group} clips); change one of them"
        )
    _wrap(check_queue_size, config.queue_size, b)


def check_model_and_data_shapes(config) -> None:
    d = config.data
    spec = _wrap(ClipSpec, d.num_frames, d.crop_size, d.num_segments, d.segment_len, prefix="data: ")
    contrast = _wrap(lambda: ContrastConfig(**config.contrast), prefix="contrast: ")
    _wrap(lambda: AugmentConfig(**d.aug), prefix="data.aug: ")
    _wrap(
        feature_map_size,
        spec.num_frames,
        spec.crop_size,
        spec.crop_size,
        prefix="data.num_frames/crop_size: ",
    )
    if contrast.use_ltcl:
        _wrap(feature_map_size, spec.segment_len, spec.crop_size, spec.crop_size, prefix="data.segment_len: ")
    _wrap(check_eval_crops, d.eval_crops, d.ten_crop_scale, prefix="data: ")
    if d.eval_stride < 1:
        raise ConfigError(f"data.eval_stride={d.eval_stride} must be >= 1")


def check_data(config, views) -> None:
    """The dataset exists, has the split, the views and at least one global batch of videos."""
    if not config.data.dir:
        raise ConfigError(
            "data.dir is empty: set --config.data.dir to the --out_dir of `python -m data_prep.build` "
            "(or run configs/demo.py, which makes its own data)"
        )
    info = _wrap(load_dataset_info, config.data.dir)
    _wrap(info.check_views, views)
    train = _wrap(info.subset, config.data.split, "train")
    if train.num_videos < config.global_batch:
        raise ConfigError(
            f"split {config.data.split} of {config.data.dir} has {train.num_videos} training videos, "
            f"fewer than global_batch={config.global_batch}; lower the batch"
        )
    if config.train.retrieval_every_epochs > 0:  # the held-out retrieval check queries test videos
        _wrap(info.subset, config.data.split, "test", prefix="train.retrieval_every_epochs > 0 needs it: ")


def check_view(view: str, key: str = "train.view") -> None:
    if view not in VIEWS:
        raise ConfigError(f"{key}={view!r} is not a view; use one of {VIEWS}")


def check_training(config) -> None:
    tc = config.train
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if tc[key] < 1:
            raise ConfigError(f"train.{key}={tc[key]} must be >= 1")
    if tc.retrieval_every_epochs < 0:
        raise ConfigError(f"train.retrieval_every_epochs={tc.retrieval_every_epochs} must be >= 0 (0 = off)")
    check_batch(config)
    check_model_and_data_shapes(config)


def check_stage_source(path: str, key: str, view: str | None, model_cfg=None) -> dict:
    """A workdir written by a finished (or running) stage; its view and model must match."""
    if not path:
        raise ConfigError(f"{key} is empty: set it to the workdir of the stage to start from")
    if not Path(path).is_dir():
        raise ConfigError(f"{key}={path} does not exist: set it to the workdir of a trained stage")
    info = _wrap(checkpoints.stage_info, path, prefix=f"{key}: ")
    seen_view = info["progress"].get("view")
    if view is not None and seen_view != view:
        raise ConfigError(f"{key}={path} holds a {seen_view!r} encoder, but the {view!r} view is needed here")
    if model_cfg is not None:  # the keys that fix parameter shapes (dtype and BN groups may differ)
        theirs = {k: info["config"].get("model", {}).get(k) for k in SHAPE_KEYS}
        ours = {k: model_cfg[k] for k in SHAPE_KEYS}
        if theirs != ours:
            raise ConfigError(
                f"{key}={path} was trained with model {theirs}; this config has {ours}; they must agree"
            )
    return info
