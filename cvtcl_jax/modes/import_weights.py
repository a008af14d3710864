"""The import_weights mode: another tool's S3D weights (CoCLR's checkpoints, torchvision's state
dicts) as an export directory that is also a finished stage, so they evaluate, start a stage
(`train.init_from`, `train.other_from`, `schedule.init_from_<view>`) and re-export like weights
trained here.

WORKDIR/
  params/, feature_extractor.jax_export, s3d_torchvision.safetensors, manifest.json
                the export mode's four artefacts (cvtcl_jax/export.py); the manifest's source
                names the checkpoint (path, format, SHA-256, epoch)
  checkpoints/  a stage checkpoint of the query and key encoders (backbone and projection head)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp

from cvtcl_jax import checkpoints, console
from cvtcl_jax.export import export_backbone
from cvtcl_jax.models import ProjectionHead, backbone_variables
from cvtcl_jax.models.imported_weights import WeightsError, import_checkpoint
from cvtcl_jax.models.s3d import S3D, feature_map_size
from cvtcl_jax.modes import checks
from cvtcl_jax.modes.checks import ConfigError

IMPORTED = "imported"
# Where each format keeps the network that is imported as the query encoder.
QUERY_PREFIX = {"coclr_pretrain": "encoder_q", "coclr_eval": "backbone", "torchvision": "features"}


def check_import(config) -> None:
    wc = config.weights
    if not wc.get("path"):
        raise ConfigError(
            "weights.path is unset: set --config.weights.path to a CoCLR checkpoint (.pth.tar, .tar), a "
            "torchvision s3d state dict (.pth) or an export's s3d_torchvision.safetensors"
        )
    if not Path(wc.path).is_file():
        raise ConfigError(f"weights.path={wc.path} is not a file")
    if wc.get("view") not in ("rgb", "flow"):
        raise ConfigError(
            f"weights.view={wc.get('view')!r}: name the view the weights were trained on, rgb or flow "
            "(CoCLR's checkpoints do not record it)"
        )
    if wc.get("bn_epsilon") is not None and not wc.bn_epsilon > 0:
        raise ConfigError(f"weights.bn_epsilon={wc.bn_epsilon} must be > 0, or None for the format's own")
    checks.check_encoder_item(config.export.encoder, "export.encoder")
    d = config.data
    try:
        feature_map_size(d.num_frames, d.crop_size, d.crop_size)
    except ValueError as e:
        raise ConfigError(f"data.num_frames/crop_size (the exported clip size): {e}") from e


def _check_workdir(workdir: Path) -> None:
    """An import never writes over a training stage's checkpoints."""
    manifest = workdir / "manifest.json"
    if (workdir / checkpoints.CHECKPOINT_DIR).is_dir():
        source = json.loads(manifest.read_text()).get("source", {}) if manifest.is_file() else {}
        if source.get("kind") != IMPORTED:
            raise ConfigError(
                f"{workdir} holds a training stage's checkpoints; import into another --workdir"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _with_head(encoder: dict, hidden: int, embed: int, seed: int) -> dict:
    """The encoder with a freshly initialised projection head (the checkpoint has none)."""
    head = ProjectionHead(hidden, embed).init(jax.random.key(seed), jnp.zeros((1, S3D().out_features)))
    return {**encoder, "params": {**encoder["params"], "head": jax.device_get(head["params"])}}


def run_import(config, workdir) -> dict:
    """Reads and checks the weights, then writes WORKDIR (see the module docstring)."""
    wd = Path(workdir)
    _check_workdir(wd)
    wc = config.weights
    path = Path(wc.path).absolute()
    try:
        weights, info = import_checkpoint(path, wc.view, wc.bn_epsilon)
    except WeightsError as e:
        raise ConfigError(f"weights.path={wc.path}: {e}") from e

    cfg = config.copy_and_resolve_references()
    cfg.model.update(
        width_multiplier=1.0,
        num_mixed_3=2,
        num_mixed_4=5,
        num_mixed_5=2,
        bn_epsilon=weights.bn_epsilon,
        reverse_input_channels=weights.reverse_input_channels,
        centre_flow=weights.centre_flow,
    )
    if weights.head_dims is not None:
        cfg.model.update(head_hidden_dim=weights.head_dims[0], embed_dim=weights.head_dims[1])
    encoder = weights.encoder
    if "head" not in encoder["params"]:
        encoder = _with_head(encoder, cfg.model.head_hidden_dim, cfg.model.embed_dim, cfg.seed)
    key_encoder = weights.key_encoder or encoder
    exported = key_encoder if config.export.encoder == "ema_encoder" else encoder
    query = QUERY_PREFIX[weights.format]
    source = {
        "kind": IMPORTED,
        "path": str(path),
        "sha256": _sha256(path),
        "format": weights.format,
        "epoch": info.get("epoch"),
        "encoder": "encoder_k" if exported is weights.key_encoder else query,
        "head": "from the checkpoint" if weights.head_dims else "initialised here (the checkpoint has none)",
    }
    clip = (cfg.data.num_frames, cfg.data.crop_size, cfg.data.crop_size)
    manifest = export_backbone(backbone_variables(exported), dict(cfg.model), clip, wc.view, wd, source)
    progress = {"stage": "import", "view": wc.view, "done": True, "source": source}
    shutil.rmtree(wd / checkpoints.CHECKPOINT_DIR, ignore_errors=True)  # an earlier import's only
    checkpoints.save_encoders(wd, encoder, key_encoder, checkpoints.config_json(cfg), progress)
    console.say(
        f"imported the {wc.view} {weights.format} weights of {path} (BatchNorm eps {weights.bn_epsilon:g}"
        + (", flow channels reversed as CoCLR read them" if weights.reverse_input_channels else "")
        + (", flow centred on each frame's median" if weights.centre_flow else "")
        + f") into {wd}: evaluate with --config.eval.{wc.view}_source={wd}, start a stage with "
        f"--config.train.init_from={wd}"
    )
    return manifest
