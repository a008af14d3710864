"""Networks from a config's `model` section (a mapping; dtypes given by name, e.g. 'bfloat16').

The one place that turns config values into modules, so training, evaluation and export build
the same networks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cvtcl_jax.models.contrastive_encoder import ContrastiveEncoder
from cvtcl_jax.models.pooling import DEFAULT_POOL_GRAD
from cvtcl_jax.models.s3d import DEFAULT_BN_EPSILON, S3D

# Model settings that belong to the weights, not to a run: whoever runs a set of weights (a stage
# started from them, an export, an evaluation) takes these from the weights' own config.
WEIGHT_SETTINGS = {"bn_epsilon": DEFAULT_BN_EPSILON, "reverse_input_channels": False, "centre_flow": False}


# Model settings that fix the parameters' shapes: a checkpoint loads only into a model that agrees
# on every one of them.
SHAPE_KEYS = ("width_multiplier", "num_mixed_3", "num_mixed_4", "num_mixed_5", "head_hidden_dim", "embed_dim")


def shape_settings(model_cfg: Mapping[str, Any]) -> dict:
    """The SHAPE_KEYS of a model config; the encoder's defaults for those a config of an earlier
    version of this code lacks (it ran with them)."""
    fields = ContrastiveEncoder.__dataclass_fields__
    return {k: model_cfg.get(k, fields[k].default) for k in SHAPE_KEYS}


def weight_settings(model_cfg: Mapping[str, Any]) -> dict:
    """{'bn_epsilon', 'reverse_input_channels', 'centre_flow'} of a model config (defaults where
    absent)."""
    return {k: model_cfg.get(k, default) for k, default in WEIGHT_SETTINGS.items()}


def centres_motion(model_cfg: Mapping[str, Any], view: str | None) -> bool:
    """Whether the network of `view` centres its input's motion: `centre_flow` is a flow setting,
    so RGB networks (and networks of no stated view) never do."""
    return bool(model_cfg.get("centre_flow", False)) and view == "flow"


def encoder_from_config(model_cfg: Mapping[str, Any], view: str | None = None) -> ContrastiveEncoder:
    """The contrastive encoder f + g of `view` ('rgb', 'flow'; None: neither, for tools that only
    need the shapes); ValueError naming any key it does not have."""
    fields = dict(model_cfg)
    fields["centre_motion"] = centres_motion(fields, view)
    fields.pop("centre_flow", None)
    for key in ("dtype", "param_dtype"):
        if isinstance(fields.get(key), str):
            fields[key] = jnp.dtype(fields[key])
    unknown = set(fields) - set(ContrastiveEncoder.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}")
    return ContrastiveEncoder(**fields)


def backbone_from_config(model_cfg: Mapping[str, Any], view: str | None = None) -> S3D:
    """The S3D of the encoder of `model_cfg` and `view` (the encoder's `backbone` variables apply
    to it)."""
    return S3D(
        **{k: v for k, v in shape_settings(model_cfg).items() if k in S3D.__dataclass_fields__},
        bn_group_size=model_cfg.get("bn_group_size"),
        bn_epsilon=model_cfg.get("bn_epsilon", DEFAULT_BN_EPSILON),
        reverse_input_channels=model_cfg.get("reverse_input_channels", False),
        centre_motion=centres_motion(model_cfg, view),
        dtype=jnp.dtype(model_cfg.get("dtype", "float32")),
        # Only matter where the backbone is trained (finetuning).
        remat=model_cfg.get("remat", False),
        pool_grad=model_cfg.get("pool_grad", DEFAULT_POOL_GRAD),
        conv_lowering=model_cfg.get("conv_lowering", "fold"),
    )


def backbone_variables(encoder: Mapping) -> dict:
    """{'params', 'batch_stats'} of the backbone inside a ContrastiveEncoder's variables."""
    return {"params": encoder["params"]["backbone"], "batch_stats": encoder["batch_stats"]["backbone"]}


def variable_shapes(module, clip: tuple[int, int, int]) -> dict:
    """The shapes and dtypes of `module`'s variables (a backbone or an encoder) for clips of
    (T, H, W) frames, by `jax.eval_shape`: nothing is computed or allocated. The template that
    restoring a checkpoint needs."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *clip, 3)), train=False))
