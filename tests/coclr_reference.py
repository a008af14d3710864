"""Deterministic CoCLR S3D checkpoints and inputs for the import tests (NumPy only, no torch).

CoCLR's network is written out here from its public structure (`backbone/s3dg.py` with gating off,
`model/pretrain.py`), independently of cvtcl_jax's name mapping: `tests/fixtures/
make_torch_fixtures.py` loads `coclr_state(seed)` into a PyTorch rendering of that network with
strict key and shape checks, and stores its outputs; the tests rebuild the same arrays here.

The BatchNorm statistics are those of a trained network where it matters: one channel in eight
has a running variance near 1e-3 (its scale shrunk to match), so BatchNorm's epsilon (1e-5 or
1e-3) changes the features by far more than float rounding.
"""

from __future__ import annotations

import collections

import numpy as np

# (in channels, [branch0, branch1 reduce, branch1, branch2 reduce, branch2, branch3]) per block.
MIXED = {
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]),
    "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]),
    "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]),
    "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}
# Each named module's second registration in CoCLR's blockN Sequentials (pools hold no tensors).
BLOCK_ALIASES = {
    "Conv_1a": "block1.0",
    "Conv_2b": "block2.1",
    "Conv_2c": "block2.2",
    "Mixed_3b": "block3.1",
    "Mixed_3c": "block3.2",
    "Mixed_4b": "block4.1",
    "Mixed_4c": "block4.2",
    "Mixed_4d": "block4.3",
    "Mixed_4e": "block4.4",
    "Mixed_4f": "block4.5",
    "Mixed_5b": "block5.1",
    "Mixed_5c": "block5.2",
}
FEATURES, HIDDEN, EMBED = 1024, 1024, 128


def _basic(name, cin, cout):
    return [(f"{name}.conv", (cout, cin, 1, 1, 1)), (f"{name}.bn", cout)]


def _st(name, cin, cout, k):
    return [
        (f"{name}.conv1", (cout, cin, 1, k, k)),
        (f"{name}.bn1", cout),
        (f"{name}.conv2", (cout, cout, k, 1, 1)),
        (f"{name}.bn2", cout),
    ]


def module_units() -> dict[str, list]:
    """{named module: [(conv name, weight shape) or (bn name, channels), ...]} in CoCLR's order."""
    units = {
        "Conv_1a": _st("Conv_1a", 3, 64, 7),
        "Conv_2b": _basic("Conv_2b", 64, 64),
        "Conv_2c": _st("Conv_2c", 64, 192, 3),
    }
    for name, (cin, (b0, b1a, b1, b2a, b2, b3)) in MIXED.items():
        units[name] = (
            _basic(f"{name}.branch0.0", cin, b0)
            + _basic(f"{name}.branch1.0", cin, b1a)
            + _st(f"{name}.branch1.1", b1a, b1, 3)
            + _basic(f"{name}.branch2.0", cin, b2a)
            + _st(f"{name}.branch2.1", b2a, b2, 3)
            + _basic(f"{name}.branch3.1", cin, b3)
        )
    return units


def _unit_arrays(rng, units) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in units:
        if isinstance(shape, tuple):
            fan_in = int(np.prod(shape[1:]))
            out[f"{name}.weight"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            continue
        var = rng.uniform(0.5, 1.5, shape)
        scale = rng.uniform(0.5, 1.5, shape)
        small = rng.random(shape) < 0.125
        var[small] = rng.uniform(5e-4, 2e-3, int(small.sum()))
        scale[small] *= np.sqrt(var[small])
        out[f"{name}.weight"] = scale.astype(np.float32)
        out[f"{name}.bias"] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        out[f"{name}.running_mean"] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        out[f"{name}.running_var"] = var.astype(np.float32)
        out[f"{name}.num_batches_tracked"] = np.array(1000, np.int64)
    return out


def backbone_state(seed: int) -> collections.OrderedDict:
    """CoCLR S3D backbone state dict as `state_dict()` lists it: each module, then its blockN alias
    (the same arrays) where the block Sequential is registered."""
    rng = np.random.default_rng(seed)
    named = {name: _unit_arrays(rng, units) for name, units in module_units().items()}
    out = collections.OrderedDict()
    order = [
        ["Conv_1a"],
        ["Conv_2b", "Conv_2c"],
        ["Mixed_3b", "Mixed_3c"],
        ["Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"],
        ["Mixed_5b", "Mixed_5c"],
    ]
    for block in order:
        for name in block:
            out.update(named[name])
        for name in block:
            alias = BLOCK_ALIASES[name]
            out.update({alias + k[len(name) :]: v for k, v in named[name].items()})
    return out


def head_state(seed: int, prefix: str) -> dict[str, np.ndarray]:
    """The projection head: 1x1x1 convs with bias, 1024 -> 1024 -> 128."""
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}2.weight": (rng.standard_normal((HIDDEN, FEATURES, 1, 1, 1)) / 32).astype(np.float32),
        f"{prefix}2.bias": (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
        f"{prefix}4.weight": (rng.standard_normal((EMBED, HIDDEN, 1, 1, 1)) / 32).astype(np.float32),
        f"{prefix}4.bias": (0.1 * rng.standard_normal(EMBED)).astype(np.float32),
    }


def pretrain_state(seed: int, queue: int = 16) -> collections.OrderedDict:
    """A CoCLR InfoNCE pretraining `state_dict()`: encoder_q, encoder_k (other values), the queue."""
    out = collections.OrderedDict()
    for name, offset in (("encoder_q", 0), ("encoder_k", 1)):
        out.update({f"{name}.0.{k}": v for k, v in backbone_state(seed + offset).items()})
        out.update(head_state(seed + 10 + offset, f"{name}."))
    rng = np.random.default_rng(seed + 20)
    q = rng.standard_normal((EMBED, queue)).astype(np.float32)
    out["queue"] = q / np.linalg.norm(q, axis=0, keepdims=True)
    out["queue_ptr"] = np.zeros(1, np.int64)
    return out


def checkpoint(seed: int) -> dict:
    """What CoCLR's main_nce.py saves: {'epoch', 'state_dict', 'best_acc', 'optimizer', 'iteration'}."""
    return {
        "epoch": 199,
        "state_dict": pretrain_state(seed),
        "best_acc": 0.75,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "iteration": 12345,
    }


def flow_clip(seed: int, shape=(2, 16, 64, 64)) -> np.ndarray:
    """uint8 flow clips (B, T, H, W, 3) in our stored layout (dx, dy, 128)."""
    rng = np.random.default_rng(seed)
    uv = np.clip(np.round(128 + 20 * rng.standard_normal((*shape, 2))), 0, 255).astype(np.uint8)
    return np.concatenate([uv, np.full((*shape, 1), 128, np.uint8)], axis=-1)


def rgb_clip(seed: int, shape=(2, 16, 64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


# (name, weight seed, clip function, clip seed)
CASES = (("flow", 3, flow_clip, 4), ("rgb", 5, rgb_clip, 6))
