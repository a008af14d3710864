"""The backbone an evaluation reads: a stage's latest checkpoint, an exported encoder, or random init.

A source is a path or the word `random`:
  STAGE_WORKDIR   a training stage's workdir (holds checkpoints/); its latest checkpoint's encoder
  EXPORT_DIR      the output of the export mode (holds manifest.json and params/)
  random          a freshly initialised backbone of the config's model (the baseline of the tables)

`describe` reads only metadata (fast, for config checks and result files); `load` restores the
S3D variables {'params', 'batch_stats'}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from cvtcl_jax import checkpoints
from cvtcl_jax.models import (
    S3D,
    backbone_from_config,
    backbone_variables,
    encoder_from_config,
    variable_shapes,
)

RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A backbone ready for feature extraction.

    clip: (num_frames, crop_size) it was trained on; source: JSON description (kind, path, view,
    stage, batch, encoder) copied into every result file.
    """

    view: str
    model_cfg: dict
    clip: tuple[int, int]
    variables: dict
    source: dict

    @property
    def module(self) -> S3D:
        return backbone_from_config(self.model_cfg, self.view)


def _export_manifest(path: Path) -> dict | None:
    manifest = path / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() and (path / "params").is_dir() else None


def describe(
    source: str, view: str, model_cfg: Mapping, clip: tuple[int, int], encoder: str = "encoder"
) -> dict:
    """What `source` holds, without loading arrays: {'kind', 'path', 'view', 'model', 'clip', ...}.

    model_cfg / clip: used for `random` only. Raises ValueError (or CheckpointError) naming the
    problem when the source is missing, of another view, or not a source at all.
    """
    if encoder not in checkpoints.ENCODER_ITEMS:
        raise ValueError(f"eval.encoder={encoder!r}; use 'encoder' (query) or 'ema_encoder' (key)")
    if source == RANDOM:
        return {"kind": RANDOM, "path": RANDOM, "view": view, "model": dict(model_cfg), "clip": list(clip)}
    path = Path(source)
    if not path.is_dir():
        raise ValueError(
            f"{source} does not exist: point the {view} source at a stage workdir, an export directory "
            f"or '{RANDOM}'"
        )
    manifest = _export_manifest(path)
    if manifest is not None:
        shape = manifest["input"]["shape"]
        desc = {
            "kind": "export",
            "path": str(path.absolute()),
            "view": manifest["view"],
            "model": manifest["model"],
            "clip": [shape[1], shape[2]],
            "trained": manifest.get("source", {}),
        }
    elif (path / checkpoints.CHECKPOINT_DIR).is_dir():
        info = checkpoints.stage_info(path)
        data = info["config"]["data"]
        desc = {
            "kind": "checkpoint",
            "path": str(path.absolute()),
            "view": info["progress"].get("view"),
            "model": info["config"]["model"],
            "clip": [data["num_frames"], data["crop_size"]],
            "stage": info["progress"].get("stage"),
            "batch": info["step"],
            "epoch": info["progress"].get("epoch"),
            "encoder": encoder,
        }
    else:
        raise ValueError(
            f"{source} is neither a stage workdir (no {checkpoints.CHECKPOINT_DIR}/) nor an export "
            "(no manifest.json + params/); point it at one of those"
        )
    if desc["view"] != view:
        raise ValueError(f"{source} holds a {desc['view']!r} encoder, but it is given as the {view!r} source")
    return desc


def load(desc: Mapping, seed: int = 0) -> Backbone:
    """The backbone `describe` found. Random init draws from (seed, view)."""
    model_cfg, clip = dict(desc["model"]), tuple(desc["clip"])
    t, s = clip
    if desc["kind"] == RANDOM:
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(desc["view"].encode()))
        # One compiled program instead of every op of the network dispatched on its own.
        init = functools.partial(backbone_from_config(model_cfg, desc["view"]).init, train=False)
        variables = jax.jit(init)(key, jnp.zeros((1, t, s, s, 3)))
    elif desc["kind"] == "export":
        template = variable_shapes(backbone_from_config(model_cfg), (t, s, s))
        with ocp.StandardCheckpointer() as ckpt:
            variables = ckpt.restore(Path(desc["path"]) / "params", template)
    else:
        shapes = variable_shapes(encoder_from_config(model_cfg), (t, s, s))
        encoder = checkpoints.restore_encoder(desc["path"], dict(shapes), desc["encoder"])
        variables = backbone_variables(encoder)
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    return Backbone(desc["view"], model_cfg, clip, variables, dict(desc))
