"""Export of a trained backbone for reuse outside this project.

OUT/
  params/                          Orbax checkpoint of the S3D variables {'params', 'batch_stats'}
  feature_extractor.jax_export     jax.export of uint8 clips (b, T, H, W, 3) -> (b, 1024) features,
                                   weights embedded, symbolic batch size, for cpu / cuda / tpu
  s3d_torchvision.safetensors      torchvision `s3d` `features.*` state dict (float32)
  manifest.json                    view, input size and format, normalisation, versions, source

`export_stage` exports a stage's latest checkpoint (the export mode, and the schedule's end).

Load the feature extractor with
  exported = jax.export.deserialize(open(OUT / "feature_extractor.jax_export", "rb").read())
  feats = exported.call(clips_uint8)
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from safetensors.numpy import save_file

from cvtcl_jax import checkpoints
from cvtcl_jax.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_from_config,
    backbone_variables,
    centres_motion,
    encoder_from_config,
    to_torchvision_s3d,
    variable_shapes,
    weight_settings,
)
from cvtcl_jax.models.imported_weights import META_BN_EPSILON, META_CENTRED, META_REVERSED

PLATFORMS = ("cpu", "cuda", "tpu")
EXPORT_FILE = "feature_extractor.jax_export"
SAFETENSORS_FILE = "s3d_torchvision.safetensors"


def export_backbone(
    variables: Mapping,
    model_cfg: Mapping,
    clip: tuple[int, int, int],
    view: str,
    out_dir: str | Path,
    source: Mapping,
) -> dict:
    """Writes the four artefacts of the module docstring; returns the manifest.

    variables: the backbone's {'params', 'batch_stats'}; clip: (T, H, W) the input size the
    feature extractor is exported for; source: where the weights came from (for the manifest).
    """
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    variables = jax.device_get(dict(variables))

    if (out / "params").exists():
        shutil.rmtree(out / "params")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(out / "params", variables)

    backbone = backbone_from_config(model_cfg, view)

    def extract(clips):
        return backbone.apply(variables, clips, train=False).astype(jnp.float32)

    (batch,) = jax.export.symbolic_shape("b")
    t, h, w = clip
    exported = jax.export.export(jax.jit(extract), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct((batch, t, h, w, 3), jnp.uint8)
    )
    (out / EXPORT_FILE).write_bytes(exported.serialize())

    settings = weight_settings(model_cfg)
    _save_torchvision(variables, settings, view, out / SAFETENSORS_FILE)
    dim = int(jax.eval_shape(extract, jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.uint8)).shape[1])
    manifest = _manifest(model_cfg, settings, view, (t, h, w), dim, backbone.is_full, exported, source)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _save_torchvision(variables: Mapping, settings: dict, view: str, path: Path) -> None:
    """torchvision's S3D state dict as safetensors, with the settings its numbers assume."""
    torch_state = {k: np.ascontiguousarray(v) for k, v in to_torchvision_s3d(variables).items()}
    # The numbers assume this epsilon, channel order and flow centring (torchvision's stock s3d()
    # has eps 1e-3 and centres nothing: a reader must centre flow itself where this says true).
    meta = {
        META_BN_EPSILON: repr(float(settings["bn_epsilon"])),
        META_REVERSED: str(settings["reverse_input_channels"]).lower(),
        META_CENTRED: str(centres_motion(settings, view)).lower(),
        "view": view,
    }
    save_file(torch_state, str(path), metadata=meta)


def _manifest(model_cfg, settings: dict, view: str, clip, dim: int, full: bool, exported, source) -> dict:
    """manifest.json: what the exported extractor takes and gives, and where it came from."""
    t, h, w = clip
    return {
        "view": view,
        "input": {
            "shape": ["batch", t, h, w, 3],
            "layout": "NTHWC",
            "dtype": "uint8",
            "content": "RGB frames"
            if view == "rgb"
            else "TV-L1 flow images (dx, dy, 128) as uint8, 0 px = 128",
            "normalisation": "inside the extractor: (x / 255 - mean) / std"
            + (", the channels reversed first" if settings["reverse_input_channels"] else "")
            + (
                ", after each frame's median flow is moved to 128 (x - median + 128)"
                if centres_motion(settings, view)
                else ""
            ),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "output": {
            "shape": ["batch", dim],
            "content": "pooled S3D features (mean over the last map), not normalised",
        },
        "model": dict(model_cfg),
        "batchnorm_epsilon": float(settings["bn_epsilon"]),
        "torchvision_compatible": full,
        "torchvision_state_dict": {
            "input_channels": "reversed: (128, dy, dx) for flow, as CoCLR read it"
            if settings["reverse_input_channels"]
            else "as stored: RGB, or flow (dx, dy, 128)",
            "note": "torchvision's stock s3d() uses BatchNorm eps 1e-3; build it with "
            "norm_layer=partial(BatchNorm3d, eps=batchnorm_epsilon) to compute these features",
        },
        "files": {"params": "params", "jax_export": EXPORT_FILE, "torchvision_state_dict": SAFETENSORS_FILE},
        "platforms": list(PLATFORMS),
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "jax_export_serialization_version": exported.calling_convention_version,
        "source": dict(source),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def export_stage(source: str | Path, out_dir: str | Path, encoder: str = "encoder") -> dict:
    """Exports the backbone of a stage's latest checkpoint (the directory: this module's docstring)."""
    info = checkpoints.stage_info(source)
    cfg = info["config"]
    model = encoder_from_config(cfg["model"])
    d = cfg["data"]
    clip = (d["num_frames"], d["crop_size"], d["crop_size"])
    variables = checkpoints.restore_encoder(source, dict(variable_shapes(model, clip)), encoder)
    where = {
        "workdir": str(Path(source).absolute()),
        "stage": info["progress"].get("stage"),
        "batch": info["step"],
        "epoch": info["progress"].get("epoch"),
        "encoder": encoder,
    }
    manifest = export_backbone(
        backbone_variables(variables), cfg["model"], clip, info["progress"]["view"], out_dir, where
    )
    logging.info("exported the %s encoder of %s to %s", encoder, source, out_dir)
    return manifest
