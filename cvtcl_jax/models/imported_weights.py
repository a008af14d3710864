"""Other tools' S3D weights as our encoder's variables: CoCLR's checkpoints, torchvision's `s3d`
state dicts and our own torchvision export, recognised by their keys and checked tensor by tensor.

  coclr_pretrain  CoCLR's InfoNCE / CoCLR pretraining checkpoints: the backbone under
                  `encoder_q.0.` (and `encoder_k.0.`), each stem and block module listed twice
                  (`Conv_1a.*` and `block1.0.*`, ...), the projection head `encoder_q.2` (1x1x1
                  conv 1024 -> 1024, bias) and `encoder_q.4` (-> 128); queues and `sampler.*`
                  (the other view's ranking network) are ignored.
  coclr_eval      CoCLR's linear-probe / finetuning checkpoints: `backbone.*` (plus `final_bn.*`,
                  `final_fc.*`, ignored).
  torchvision     torchvision's `s3d` state dict: `features.*` (plus `classifier.*`, ignored),
                  in PyTorch's file formats or as safetensors (our exports' torchvision file,
                  whose metadata states the BatchNorm epsilon and channel order it assumes).

CoCLR's S3D (`backbone/s3dg.py` with gating off) is torchvision's layer for layer under other
names, with PyTorch's default BatchNorm epsilon 1e-5 where torchvision's uses 1e-3; CoCLR reads its
flow JPEGs as RGB, so its flow networks saw (128, dy, dx) where we store (dx, dy, 128). Both facts
travel as the model settings `bn_epsilon` and `reverse_input_channels` (docs/coming_from_coclr.md).
A leading `module.` (DataParallel) is dropped from every key.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from cvtcl_jax.models.builders import variable_shapes
from cvtcl_jax.models.s3d import DEFAULT_BN_EPSILON, MIXED_4, S3D
from cvtcl_jax.models.torch_checkpoint import TorchFileError, load_torch_file
from cvtcl_jax.models.torchvision_weights import conv_bn_units, load_torchvision_s3d, to_torchvision_s3d

TORCHVISION_BN_EPSILON = 1e-3
FORMATS = ("coclr_pretrain", "coclr_eval", "torchvision")

# CoCLR's module of each of our top-level modules, and its second registration in blockN.
_COCLR_TOP = {
    "stem": ("Conv_1a", "block1.0"),
    "conv_2b": ("Conv_2b", "block2.1"),
    "conv_2c": ("Conv_2c", "block2.2"),
    "mixed_3b": ("Mixed_3b", "block3.1"),
    "mixed_3c": ("Mixed_3c", "block3.2"),
    **{name: (f"Mixed_{name[-2:]}", f"block4.{i + 1}") for i, name in enumerate(MIXED_4)},
    "mixed_5b": ("Mixed_5b", "block5.1"),
    "mixed_5c": ("Mixed_5c", "block5.2"),
}
# CoCLR's conv + BN unit of each of our unit paths below a top-level module.
_COCLR_UNIT = {
    (): ("conv", "bn"),  # BasicConv3d (Conv_2b)
    ("spatial",): ("conv1", "bn1"),  # STConv3d (the stem, Conv_2c)
    ("temporal",): ("conv2", "bn2"),
    ("branch0",): ("branch0.0.conv", "branch0.0.bn"),
    ("branch1_reduce",): ("branch1.0.conv", "branch1.0.bn"),
    ("branch1_sep", "spatial"): ("branch1.1.conv1", "branch1.1.bn1"),
    ("branch1_sep", "temporal"): ("branch1.1.conv2", "branch1.1.bn2"),
    ("branch2_reduce",): ("branch2.0.conv", "branch2.0.bn"),
    ("branch2_sep", "spatial"): ("branch2.1.conv1", "branch2.1.bn1"),
    ("branch2_sep", "temporal"): ("branch2.1.conv2", "branch2.1.bn2"),
    ("branch3",): ("branch3.1.conv", "branch3.1.bn"),
}
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


class WeightsError(ValueError):
    """The weights are not an S3D this project can run; the message names what differs."""


def coclr_to_torchvision_names() -> dict[str, str]:
    """CoCLR backbone key (e.g. `Conv_1a.conv1.weight`) -> torchvision key (`features.0.0.0.weight`)."""
    out = {}
    for path, prefix in conv_bn_units():
        module, _ = _COCLR_TOP[path[0]]
        conv, bn = _COCLR_UNIT[path[1:]]
        out[f"{module}.{conv}.weight"] = f"{prefix}.0.weight"
        for field in _BN_FIELDS:
            out[f"{module}.{bn}.{field}"] = f"{prefix}.1.{field}"
    return out


@functools.cache
def torchvision_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision key -> shape of the full S3D's `features.*` (num_batches_tracked left out)."""
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(S3D(), (8, 32, 32)))
    return {k: v.shape for k, v in to_torchvision_s3d(zeros).items() if not k.endswith("num_batches_tracked")}


@dataclasses.dataclass
class ImportedWeights:
    """Weights read from another tool, as our variables.

    encoder / key_encoder: {'params': {'backbone', 'head'?}, 'batch_stats': {'backbone'}} of the
      query and (CoCLR pretraining only, else None) key network; 'head' only where the checkpoint
      has a projection head (then head_dims = (hidden, embedding)).
    """

    format: str
    encoder: dict
    key_encoder: dict | None
    head_dims: tuple[int, int] | None
    bn_epsilon: float
    reverse_input_channels: bool
    centre_flow: bool = False  # only our exports say True (their metadata)


def _strip_module(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def detect_format(state: Mapping[str, np.ndarray]) -> str:
    """Which of FORMATS a state dict is, from its keys; WeightsError naming what it holds otherwise."""
    keys = list(state)
    if any(k.startswith("encoder_q.0.") for k in keys):
        return "coclr_pretrain"
    if any(k.startswith("backbone.") for k in keys):
        return "coclr_eval"
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    shown = ", ".join(sorted({k.split(".")[0] for k in keys})[:12]) or "nothing"
    raise WeightsError(
        f"not a CoCLR or torchvision S3D checkpoint: its state dict holds {shown} (expected "
        "encoder_q.0.* for CoCLR pretraining, backbone.* for CoCLR evaluation, features.* for torchvision)"
    )


def _sub(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _coclr_backbone(sub: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """CoCLR backbone keys (below `where`) -> torchvision keys, checked for gating and duplicates."""
    gating = sorted(k for k in sub if ".gating_b" in k)
    if gating:
        raise WeightsError(
            f"{where} is S3D-G (self-gating, e.g. {where}{gating[0]}): only CoCLR's 's3d' networks (no "
            "gating) have our architecture"
        )
    if not any(k.startswith(("Conv_1a.", "block1.0.")) for k in sub):
        shown = ", ".join(sorted(sub)[:4])
        raise WeightsError(
            f"the backbone under {where} is not CoCLR's S3D (no Conv_1a.*; it holds {shown}, ...): "
            "only S3D checkpoints can be imported"
        )
    canonical: dict[str, np.ndarray] = {}
    aliases = {alias: name for name, alias in _COCLR_TOP.values()}
    for key, value in sub.items():
        if key.endswith("num_batches_tracked"):
            continue
        head, _, rest = key.partition(".")
        if head.startswith("block"):
            block, _, rest = rest.partition(".")
            name = aliases.get(f"{head}.{block}")
            if name is None:  # a pool inside a block has no tensors; anything else is foreign
                canonical.setdefault(f"{head}.{block}.{rest}", value)
                continue
            key = f"{name}.{rest}"
        if key in canonical and not np.array_equal(canonical[key], value):
            raise WeightsError(f"{where}{key} and its blockN.* registration hold different values")
        canonical[key] = value
    names = coclr_to_torchvision_names()
    unknown = sorted(k for k in canonical if k not in names)
    if unknown:
        raise WeightsError(
            f"{where} has tensors CoCLR's S3D does not: {', '.join(unknown[:6])}"
            + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        )
    missing = sorted(k for k in names if k not in canonical)
    if missing:
        raise WeightsError(
            f"{where} lacks {len(missing)} tensors of CoCLR's S3D: {', '.join(missing[:6])}"
            + (" ..." if len(missing) > 6 else "")
        )
    return {names[k]: v for k, v in canonical.items()}


def _torchvision_backbone(features: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """torchvision `features.*` keys, checked for foreign and missing tensors."""
    expected = torchvision_shapes()
    got = {f"features.{k}": v for k, v in features.items() if not k.endswith("num_batches_tracked")}
    unknown = sorted(k for k in got if k not in expected)
    if unknown:
        raise WeightsError(f"{where} has tensors torchvision's s3d does not: {', '.join(unknown[:6])}")
    missing = sorted(k for k in expected if k not in got)
    if missing:
        raise WeightsError(
            f"{where} lacks {len(missing)} tensors of torchvision's s3d: {', '.join(missing[:6])}"
            + (" ..." if len(missing) > 6 else "")
        )
    return got


def _check_shapes(tv: Mapping[str, np.ndarray], where: str, name_in_file: Callable[[str], str]) -> None:
    """Every tensor has the full S3D's shape; the error names them as the file does."""
    wrong = [
        f"{where}{name_in_file(k)} is {tuple(np.shape(tv[k]))}, expected {shape}"
        for k, shape in torchvision_shapes().items()
        if tuple(np.shape(tv[k])) != shape
    ]
    if wrong:
        raise WeightsError(
            "the backbone is not the full S3D (another width, or another network): " + "; ".join(wrong[:4])
        )


def _backbone_variables(state: Mapping[str, np.ndarray], fmt: str, prefix: str) -> dict:
    sub = _sub(state, prefix)
    if fmt == "torchvision":
        tv = _torchvision_backbone(sub, prefix)
        _check_shapes(tv, prefix, lambda k: k.removeprefix("features."))
    else:
        tv = _coclr_backbone(sub, prefix)
        coclr_name = {v: k for k, v in coclr_to_torchvision_names().items()}
        _check_shapes(tv, prefix, coclr_name.__getitem__)
    for key, value in tv.items():
        if np.asarray(value).dtype.kind in "biu":  # bfloat16 arrays are of kind "V"
            raise WeightsError(f"{prefix}{key} holds {np.asarray(value).dtype} values, expected floats")
    return load_torchvision_s3d(tv)


def _coclr_head(state: Mapping[str, np.ndarray], prefix: str, feature_dim: int) -> tuple[dict, tuple]:
    """CoCLR's projection head (1x1x1 convs `<prefix>2` and `<prefix>4`) as our ProjectionHead's params."""
    layers = {}
    for index, name in ((2, "fc1"), (4, "fc2")):
        w, b = state.get(f"{prefix}{index}.weight"), state.get(f"{prefix}{index}.bias")
        if w is None or b is None:
            raise WeightsError(f"the checkpoint lacks the projection head's {prefix}{index}.weight / .bias")
        w = np.asarray(w, np.float32)
        if w.ndim != 5 or w.shape[2:] != (1, 1, 1) or np.shape(b) != (w.shape[0],):
            raise WeightsError(
                f"{prefix}{index}.weight is {w.shape} with bias {np.shape(b)}; CoCLR's head is 1x1x1 convs"
            )
        layers[name] = {"kernel": w[:, :, 0, 0, 0].T.copy(), "bias": np.asarray(b, np.float32)}
    hidden, embed = layers["fc1"]["kernel"].shape[1], layers["fc2"]["kernel"].shape[1]
    if layers["fc1"]["kernel"].shape[0] != feature_dim or layers["fc2"]["kernel"].shape[0] != hidden:
        raise WeightsError(
            f"the projection head maps {layers['fc1']['kernel'].shape[0]} -> {hidden} -> "
            f"{layers['fc2']['kernel'].shape[0]} -> {embed}; it must start at the backbone's {feature_dim}"
        )
    return layers, (hidden, embed)


def _encoder(backbone: dict, head: dict | None) -> dict:
    params = {"backbone": backbone["params"]}
    if head is not None:
        params["head"] = head
    return {"params": params, "batch_stats": {"backbone": backbone["batch_stats"]}}


def import_state_dict(
    state: Mapping[str, np.ndarray], view: str, bn_epsilon: float | None = None, fmt: str | None = None
) -> ImportedWeights:
    """A CoCLR or torchvision S3D state dict (NumPy arrays) as our variables.

    view: 'rgb' or 'flow' (CoCLR's checkpoints do not record it); the flow of CoCLR's checkpoints
    is read with the channels reversed. bn_epsilon: None takes the format's (CoCLR 1e-5,
    torchvision 1e-3). fmt: None detects it. Raises WeightsError naming what differs from S3D.
    """
    if view not in ("rgb", "flow"):
        raise WeightsError(f"view must be 'rgb' or 'flow', got {view!r}")
    state = _strip_module(state)
    fmt = fmt or detect_format(state)
    if fmt not in FORMATS:
        raise WeightsError(f"format must be one of {FORMATS}, got {fmt!r}")
    prefix = {"coclr_pretrain": "encoder_q.0.", "coclr_eval": "backbone.", "torchvision": "features."}[fmt]
    backbone = _backbone_variables(state, fmt, prefix)
    head = key_encoder = head_dims = None
    if fmt == "coclr_pretrain":
        head, head_dims = _coclr_head(state, "encoder_q.", S3D().out_features)
        if any(k.startswith("encoder_k.0.") for k in state):
            key_head, _ = _coclr_head(state, "encoder_k.", S3D().out_features)
            key_encoder = _encoder(_backbone_variables(state, fmt, "encoder_k.0."), key_head)
    if bn_epsilon is None:
        bn_epsilon = TORCHVISION_BN_EPSILON if fmt == "torchvision" else DEFAULT_BN_EPSILON
    return ImportedWeights(
        format=fmt,
        encoder=_encoder(backbone, head),
        key_encoder=key_encoder,
        head_dims=head_dims,
        bn_epsilon=float(bn_epsilon),
        reverse_input_channels=fmt != "torchvision" and view == "flow",
    )


# safetensors metadata our exports write (export.py) and an import reads back.
META_BN_EPSILON = "bn_epsilon"
META_REVERSED = "reverse_input_channels"
META_CENTRED = "centre_flow"


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict, what else the file says) of a PyTorch checkpoint or a safetensors file.

    A checkpoint's state dict is its 'state_dict' entry (CoCLR's {'epoch', 'state_dict', ...}) or
    the file's dict itself (torchvision's); the second value holds the checkpoint's epoch and a
    safetensors file's metadata. Raises WeightsError for anything else.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, {"metadata": dict(f.metadata() or {})}
        except (OSError, ValueError) as e:
            raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        obj = load_torch_file(path)
    except TorchFileError as e:
        raise WeightsError(str(e)) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        info = {k: obj[k] for k in ("epoch", "iteration", "best_acc") if isinstance(obj.get(k), int | float)}
        return dict(obj["state_dict"]), info
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj), {}
    held = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise WeightsError(f"{path} holds {held}, neither a state dict nor a checkpoint with a 'state_dict'")


def import_checkpoint(path, view: str, bn_epsilon: float | None = None) -> tuple[ImportedWeights, dict]:
    """`read_checkpoint` then `import_state_dict`; a safetensors file's own metadata (our exports)
    gives the epsilon, channel order and flow centring it assumes. -> (weights, the file's other facts)."""
    state, info = read_checkpoint(path)
    meta = info.get("metadata", {})
    if bn_epsilon is None and META_BN_EPSILON in meta:
        bn_epsilon = float(meta[META_BN_EPSILON])
    weights = import_state_dict(state, view, bn_epsilon)
    if META_REVERSED in meta:
        weights.reverse_input_channels = meta[META_REVERSED] == "true"
    if META_CENTRED in meta:
        weights.centre_flow = meta[META_CENTRED] == "true"
    return weights, info
