"""Checks of a config against the devices, the data and earlier stages, before any work starts:
the pieces each mode's check (beside its runner) is made of.

Every failure is a ConfigError whose message names the value seen and what to change.
"""

from __future__ import annotations

from pathlib import Path

import jax

from cvtcl_jax import checkpoints
from cvtcl_jax.data.augment import AugmentConfig, check_eval_crops
from cvtcl_jax.data.dataset_info import VIEWS, DatasetError, load_dataset_info, verify_shards
from cvtcl_jax.eval.protocols import PROTOCOLS
from cvtcl_jax.eval.store import EVAL_VIEWS, source_descriptions, views_of
from cvtcl_jax.models.builders import backbone_from_config, shape_settings
from cvtcl_jax.models.conv import CONV_LOWERINGS
from cvtcl_jax.models.pooling import DEFAULT_POOL_GRAD, POOL_GRADS
from cvtcl_jax.models.s3d import DEFAULT_BN_EPSILON, feature_map_size
from cvtcl_jax.queue import check_queue_size
from cvtcl_jax.training.stage import clip_spec, contrast_config


class ConfigError(ValueError):
    """The config cannot work; the message says what to change."""


def _as_config_error(fn, *args, prefix: str = "", **kwargs):
    """fn(*args, **kwargs), with the errors that a bad value raises in the code that uses it (a
    ValueError from ClipSpec, a missing checkpoint, ...) raised as a ConfigError whose message
    starts with `prefix`, the setting it came from."""
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
    _as_config_error(check_queue_size, config.queue_size, b)


def check_model_and_data_shapes(config) -> None:
    d = config.data
    spec = _as_config_error(clip_spec, config, prefix="data: ")
    contrast = _as_config_error(contrast_config, config, prefix="contrast: ")
    _as_config_error(lambda: AugmentConfig(**d.aug), prefix="data.aug: ")
    _as_config_error(
        feature_map_size,
        spec.num_frames,
        spec.crop_size,
        spec.crop_size,
        prefix="data.num_frames/crop_size: ",
    )
    if contrast.use_ltcl:
        _as_config_error(
            feature_map_size, spec.segment_len, spec.crop_size, spec.crop_size, prefix="data.segment_len: "
        )
    _as_config_error(check_eval_crops, d.eval_crops, d.ten_crop_scale, prefix="data: ")
    _as_config_error(lambda: backbone_from_config(config.model).mixed_blocks, prefix="model.")
    if config.model.get("pool_grad", DEFAULT_POOL_GRAD) not in POOL_GRADS:
        raise ConfigError(f"model.pool_grad={config.model.pool_grad!r} must be one of {sorted(POOL_GRADS)}")
    if config.model.get("conv_lowering", "fold") not in CONV_LOWERINGS:
        raise ConfigError(
            f"model.conv_lowering={config.model.conv_lowering!r} must be one of {CONV_LOWERINGS}"
        )
    if d.eval_stride < 1:
        raise ConfigError(f"data.eval_stride={d.eval_stride} must be >= 1")
    check_weight_settings(config.model)


def check_weight_settings(model_cfg) -> None:
    """The model settings that belong to the weights (BN epsilon, input channel order, flow centring)."""
    eps = model_cfg.get("bn_epsilon", DEFAULT_BN_EPSILON)
    if not (isinstance(eps, int | float) and eps > 0):
        raise ConfigError(
            f"model.bn_epsilon={eps!r} must be > 0 (1e-5 for ours and CoCLR's weights, 1e-3 for "
            "torchvision's)"
        )
    for key in ("reverse_input_channels", "centre_flow"):
        if not isinstance(model_cfg.get(key, False), bool):
            raise ConfigError(f"model.{key}={model_cfg.get(key)!r} must be True or False")


def dataset_info(d):
    """The dataset named by data.dir and data.name, or a ConfigError that says how to get one."""
    for key in ("dir", "name"):
        if not d.get(key):
            raise ConfigError(
                f"data.{key} is unset: set --config.data.dir to the --out_dir of `python -m data_prep.build` "
                "(a TFDS data_dir) and --config.data.name to the dataset it printed, e.g. "
                "cvtcl_ucf101/split1 (or run configs/demo.py, which makes its own data)"
            )
    return _as_config_error(load_dataset_info, d.dir, d.name)


def check_data(config, views) -> None:
    """The dataset exists, has the views, a train split with at least one global batch of videos."""
    info = dataset_info(config.data)
    _as_config_error(info.check_views, views)
    _as_config_error(info.check_crop, config.data.crop_size)
    train = _as_config_error(info.subset, "train")
    _as_config_error(verify_shards, info, ["train"] + ["test"] * (config.train.retrieval_every_epochs > 0))
    if train.num_videos < config.global_batch:
        raise ConfigError(
            f"{info.name} in {config.data.dir} has {train.num_videos} training videos, "
            f"fewer than global_batch={config.global_batch}; lower the batch"
        )
    check_padded_windows(config, train)
    if config.train.retrieval_every_epochs > 0:  # the held-out retrieval check queries test videos
        _as_config_error(info.subset, "test", prefix="train.retrieval_every_epochs > 0 needs it: ")


def check_padded_windows(config, train) -> None:
    """on_device 'resize' pads the shipped frames to the training subset's largest frame, which
    the metadata must record."""
    if config.data.aug.get("on_device") == "resize":
        _as_config_error(train.require_max_frame_size)


def check_view(view: str, key: str = "train.view") -> None:
    if view not in VIEWS:
        raise ConfigError(f"{key}={view!r} is not a view; use one of {VIEWS}")


def check_encoder_item(value: str, key: str) -> None:
    """A checkpoint's encoder item: the query or the key network."""
    if value not in checkpoints.ENCODER_ITEMS:
        raise ConfigError(
            f"{key}={value!r}; use 'encoder' (the query network) or 'ema_encoder' (the key network)"
        )


def check_training(config) -> None:
    tc = config.train
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if tc[key] < 1:
            raise ConfigError(f"train.{key}={tc[key]} must be >= 1")
    for key in ("key_from", "other_encoder"):
        check_encoder_item(tc[key], f"train.{key}")
    if tc.retrieval_every_epochs < 0:
        raise ConfigError(f"train.retrieval_every_epochs={tc.retrieval_every_epochs} must be >= 0 (0 = off)")
    _check_numbers("optim", config.optim, positive=("lr",), non_negative=("weight_decay",))
    _check_unset_or_positive("schedule", config.schedule, "cotrain_lr", "optim.lr")
    _check_unset_or_positive("data", config.data, "threads", "one per core")
    _check_unset_or_positive("train", tc, "retrieval_max_videos", "every video")
    check_batch(config)
    check_model_and_data_shapes(config)


def check_stage_source(path: str, key: str, view: str | None, model_cfg=None) -> dict:
    """A workdir written by a finished (or running) stage; its view and model must match."""
    if not path:
        raise ConfigError(f"{key} is unset: set it to the workdir of the stage to start from")
    if not Path(path).is_dir():
        raise ConfigError(f"{key}={path} does not exist: set it to the workdir of a trained stage")
    info = _as_config_error(checkpoints.stage_info, path, prefix=f"{key}: ")
    seen_view = info["progress"].get("view")
    if view is not None and seen_view != view:
        raise ConfigError(f"{key}={path} holds a {seen_view!r} encoder, but the {view!r} view is needed here")
    if model_cfg is not None:  # the keys that fix parameter shapes (dtype and BN groups may differ)
        theirs = shape_settings(info["config"].get("model", {}))
        ours = shape_settings(model_cfg)
        if theirs != ours:
            raise ConfigError(
                f"{key}={path} was trained with model {theirs}; this config has {ours}; they must agree"
            )
    return info


def check_evaluation(config, protocol: str) -> dict:
    """An evaluation config (retrieval / linear_probe / finetune); returns the sources' descriptions."""
    ec = config.eval
    if ec.view not in EVAL_VIEWS:
        raise ConfigError(f"eval.view={ec.view!r}; use one of {EVAL_VIEWS}")
    b, n_dev, n_proc = config.global_batch, jax.device_count(), jax.process_count()
    if b <= 0 or b % n_dev or b % n_proc:
        raise ConfigError(
            f"global_batch={b} (the evaluation batch) must be a positive multiple of the {n_dev} devices "
            f"and {n_proc} processes"
        )
    if ec.num_pictures < 0:
        raise ConfigError(f"eval.num_pictures={ec.num_pictures} must be >= 0")
    sources = _as_config_error(source_descriptions, config)
    d = config.data
    _as_config_error(check_eval_crops, d.eval_crops, d.ten_crop_scale, prefix="data: ")
    if d.eval_stride < 1:
        raise ConfigError(f"data.eval_stride={d.eval_stride} must be >= 1")
    for view, desc in sources.items():
        t, s = desc["clip"] if ec.clip_from_source else (d.num_frames, d.crop_size)
        _as_config_error(feature_map_size, t, s, s, prefix=f"{view} evaluation clip ({t}x{s}x{s}): ")
    info = dataset_info(d)
    _as_config_error(info.check_views, views_of(ec.view))
    _as_config_error(verify_shards, info, ("train", "test"))
    for view, desc in sources.items():
        s = desc["clip"][1] if ec.clip_from_source else d.crop_size
        _as_config_error(info.check_crop, s, f"the {view} evaluation clip's crop")
    train = _as_config_error(info.subset, "train")
    _as_config_error(info.subset, "test")
    record = PROTOCOLS[protocol]
    if record.section is not None:
        values = config[record.section]
        _check_numbers(record.section, values, record.positive, record.non_negative)
        for key in record.fractions:
            if not 0 <= values[key] < 1:
                raise ConfigError(f"{record.section}.{key}={values[key]} must be in [0, 1)")
    if record.on_clips(config):
        _as_config_error(lambda: AugmentConfig(**d.aug), prefix="data.aug: ")
        check_padded_windows(config, train)
        if train.num_videos < b:
            raise ConfigError(
                f"{info.name} in {d.dir} has {train.num_videos} training videos, fewer than "
                f"global_batch={b} (one epoch); lower the batch"
            )
    return sources


def _check_unset_or_positive(section: str, values, key: str, unset: str) -> None:
    """None means unset (what None gives is `unset`); a number must be positive."""
    value = values.get(key)
    if value is not None and not value > 0:
        raise ConfigError(f"{section}.{key}={value} must be > 0, or None for {unset}")


def _check_numbers(section: str, values, positive=(), non_negative=()) -> None:
    for key in positive:
        if not values[key] > 0:
            raise ConfigError(f"{section}.{key}={values[key]} must be > 0")
    for key in non_negative:
        if values[key] < 0:
            raise ConfigError(f"{section}.{key}={values[key]} must be >= 0")
