"""Deterministic torchvision-S3D weights and inputs for the parity fixture (no torch needed).

`tests/fixtures/make_s3d_fixture.py` builds the same arrays, loads them into torchvision's `s3d`
and stores only the outputs; the test rebuilds the arrays from the seed and compares.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cvtcl_jax.models import S3D, to_torchvision_s3d


def torchvision_key_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of torchvision's `s3d().features`, derived from our S3D."""
    shapes = jax.eval_shape(lambda: S3D().init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return {k: v.shape for k, v in to_torchvision_s3d(zeros).items()}


def random_torchvision_state(seed: int) -> dict[str, np.ndarray]:
    """Random but well-scaled weights and BN statistics for every key, in sorted key order."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in sorted(torchvision_key_shapes().items()):
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros((), np.int64)
        elif key.endswith("0.weight") and len(shape) == 5:
            fan_in = int(np.prod(shape[1:]))
            out[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif key.endswith("running_var") or key.endswith("1.weight"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # BN bias, running_mean
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def reference_input(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Clip batch (B, T, H, W, 3) of standard-normal float32 values."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (name, weight seed, input seed, input shape NTHWC)
CASES = (
    ("full_32x128", 0, 1, (2, 32, 128, 128, 3)),
    ("small_8x32", 0, 2, (4, 8, 32, 32, 3)),
)
