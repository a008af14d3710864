"""Conversion between torchvision's `s3d` state dict and our `S3D` variables (both directions).

Works on NumPy arrays keyed by torchvision's names (`features.0.0.0.weight`, ...), so neither
direction needs torch at run time. torchvision's `s3d` itself is the full network (default
`S3D()` arguments); the small variants (fewer Mixed blocks, any width) convert too, under the same
names minus the blocks they lack, so their exports round-trip.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from cvtcl_jax.models.s3d import MIXED_3, MIXED_4, MIXED_5

# torchvision `features` index of each of our top-level modules.
_TOP = {
    "stem": 0,
    "conv_2b": 2,
    "conv_2c": 3,
    "mixed_3b": 5,
    "mixed_3c": 6,
    "mixed_4b": 8,
    "mixed_4c": 9,
    "mixed_4d": 10,
    "mixed_4e": 11,
    "mixed_4f": 12,
    "mixed_5b": 14,
    "mixed_5c": 15,
}
_SEP = (("spatial", "0"), ("temporal", "1"))
_MIXED = (
    ("branch0", "branch0"),
    ("branch1_reduce", "branch1.0"),
    ("branch1_sep", "branch1.1"),
    ("branch2_reduce", "branch2.0"),
    ("branch2_sep", "branch2.1"),
    ("branch3", "branch3.1"),
)


# Blocks that the small variants may leave out (all but the first of each stage).
_OPTIONAL = (*MIXED_3[1:], *MIXED_4[1:], *MIXED_5[1:])


def conv_bn_units(skip: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Yields (our module path, torchvision prefix) for every conv + BN unit of the network."""
    for top, idx in _TOP.items():
        if top in skip:
            continue
        prefix = f"features.{idx}"
        if top == "conv_2b":
            yield (top,), prefix
        elif top in ("stem", "conv_2c"):
            for ours, theirs in _SEP:
                yield (top, ours), f"{prefix}.{theirs}"
        else:
            for branch, theirs in _MIXED:
                if branch.endswith("_sep"):
                    for ours, sub in _SEP:
                        yield (top, branch, ours), f"{prefix}.{theirs}.{sub}"
                else:
                    yield (top, branch), f"{prefix}.{theirs}"


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def load_torchvision_s3d(arrays: Mapping[str, np.ndarray]) -> dict:
    """torchvision `s3d` state-dict arrays -> `{'params': ..., 'batch_stats': ...}` for `S3D()`.

    Conv weights (out, in, t, h, w) become Flax kernels (t, h, w, in, out); BN weight/bias become
    scale/bias and running_mean/var the batch statistics. Keys outside `features.` (the
    classifier) and `num_batches_tracked` are ignored; a missing or misshaped key raises KeyError
    or ValueError naming it.
    """
    params: dict = {}
    stats: dict = {}
    absent = tuple(t for t in _OPTIONAL if f"features.{_TOP[t]}.branch0.0.weight" not in arrays)
    for path, prefix in conv_bn_units(skip=absent):

        def take(name, _prefix=prefix):
            key = f"{_prefix}.{name}"
            if key not in arrays:
                raise KeyError(f"torchvision S3D state dict lacks {key!r}; is it an s3d state dict?")
            return np.asarray(arrays[key], np.float32)

        weight = take("0.weight")
        if weight.ndim != 5:
            raise ValueError(f"{prefix}.0.weight should be a 5-d conv weight, got {weight.shape}")
        _set(params, (*path, "conv", "kernel"), np.transpose(weight, (2, 3, 4, 1, 0)))
        _set(params, (*path, "bn", "scale"), take("1.weight"))
        _set(params, (*path, "bn", "bias"), take("1.bias"))
        _set(stats, (*path, "bn", "mean"), take("1.running_mean"))
        _set(stats, (*path, "bn", "var"), take("1.running_var"))
    return {"params": params, "batch_stats": stats}


def to_torchvision_s3d(variables: Mapping) -> dict[str, np.ndarray]:
    """Inverse of `load_torchvision_s3d`: our full `S3D()` variables -> torchvision state dict.

    The result has every `features.*` key of torchvision's `s3d` (with `num_batches_tracked` = 0),
    so `model.features.load_state_dict` style loading works after prefixing; the classifier is not
    part of the backbone and is left out.
    """
    params, stats = variables["params"], variables["batch_stats"]
    out: dict[str, np.ndarray] = {}
    for path, prefix in conv_bn_units(skip=tuple(t for t in _OPTIONAL if t not in params)):
        kernel = np.asarray(_get(params, (*path, "conv", "kernel")), np.float32)
        out[f"{prefix}.0.weight"] = np.ascontiguousarray(np.transpose(kernel, (4, 3, 0, 1, 2)))
        out[f"{prefix}.1.weight"] = np.asarray(_get(params, (*path, "bn", "scale")), np.float32)
        out[f"{prefix}.1.bias"] = np.asarray(_get(params, (*path, "bn", "bias")), np.float32)
        out[f"{prefix}.1.running_mean"] = np.asarray(_get(stats, (*path, "bn", "mean")), np.float32)
        out[f"{prefix}.1.running_var"] = np.asarray(_get(stats, (*path, "bn", "var")), np.float32)
        out[f"{prefix}.1.num_batches_tracked"] = np.zeros((), np.int64)
    return out
