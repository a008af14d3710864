"""S3D backbone (no gating), layer for layer the network of torchvision's `s3d` and CoCLR.

Input clips are NTHWC floats; the output is the 1024-d feature averaged over (T, H, W). Padding is
explicit and symmetric like PyTorch's so that torchvision weights give the same outputs (see
`torchvision_weights.py`). Module names follow the Inception naming of the paper; the mapping to
torchvision's `features.N` indices lives next to the weight import.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cvtcl_jax.models.batchnorm import GroupedBatchNorm
from cvtcl_jax.models.conv import CONV_LOWERINGS, Conv3d
from cvtcl_jax.models.pooling import DEFAULT_POOL_GRAD, POOL_GRADS
from cvtcl_jax.models.preprocess import centre_motion, normalize_frames

# Inception block widths: (branch0, branch1 reduce, branch1 out, branch2 reduce, branch2 out,
# branch3 pool projection). Output channels = branch0 + branch1 out + branch2 out + branch3.
MIXED_BLOCKS = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The Mixed blocks of each stage, in order; small variants keep the first few of each.
MIXED_3 = ("mixed_3b", "mixed_3c")
MIXED_4 = ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f")
MIXED_5 = ("mixed_5b", "mixed_5c")

# He-normal initialisation suits the conv + BN + ReLU units.
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")

# PyTorch's BatchNorm default, CoCLR's; torchvision's `s3d()` uses 1e-3 (docs/method.md §4).
DEFAULT_BN_EPSILON = 1e-5


def _unit_kwargs(module) -> dict:
    """The settings every conv unit takes from the module that holds it."""
    return dict(
        bn_group_size=module.bn_group_size,
        bn_epsilon=module.bn_epsilon,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        conv_lowering=module.conv_lowering,
    )


class ConvBN(nn.Module):
    """Conv3d (no bias) + BatchNorm + ReLU with explicit symmetric padding. (B,T,H,W,C)->(B,T',H',W',F)."""

    features: int
    kernel: tuple[int, int, int] = (1, 1, 1)
    strides: tuple[int, int, int] = (1, 1, 1)
    bn_group_size: int | None = None
    bn_epsilon: float = DEFAULT_BN_EPSILON
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_lowering: str = "fold"

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv3d(
            self.features,
            self.kernel,
            self.strides,
            lowering=self.conv_lowering,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_KERNEL_INIT,
            name="conv",
        )(x)
        x = GroupedBatchNorm(
            self.bn_group_size,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x, train)
        return nn.relu(x)


class SepConv(nn.Module):
    """Separable unit: (1,k,k) conv-BN-ReLU then (k,1,1) conv-BN-ReLU."""

    features: int
    kernel: int
    stride: int = 1
    bn_group_size: int | None = None
    bn_epsilon: float = DEFAULT_BN_EPSILON
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_lowering: str = "fold"

    @nn.compact
    def __call__(self, x, train: bool):
        k, s = self.kernel, self.stride
        kw = _unit_kwargs(self)
        x = ConvBN(self.features, (1, k, k), (1, s, s), name="spatial", **kw)(x, train)
        return ConvBN(self.features, (k, 1, 1), (s, 1, 1), name="temporal", **kw)(x, train)


class Mixed(nn.Module):
    """Separable Inception block; the four branch outputs are concatenated on channels."""

    widths: tuple[int, int, int, int, int, int]
    bn_group_size: int | None = None
    bn_epsilon: float = DEFAULT_BN_EPSILON
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    pool_grad: str = DEFAULT_POOL_GRAD
    conv_lowering: str = "fold"

    @nn.compact
    def __call__(self, x, train: bool):
        b0, b1r, b1, b2r, b2, b3 = self.widths
        kw = _unit_kwargs(self)
        y0 = ConvBN(b0, name="branch0", **kw)(x, train)
        y1 = ConvBN(b1r, name="branch1_reduce", **kw)(x, train)
        y1 = SepConv(b1, 3, name="branch1_sep", **kw)(y1, train)
        y2 = ConvBN(b2r, name="branch2_reduce", **kw)(x, train)
        y2 = SepConv(b2, 3, name="branch2_sep", **kw)(y2, train)
        y3 = POOL_GRADS[self.pool_grad](x, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        y3 = ConvBN(b3, name="branch3", **kw)(y3, train)
        return jnp.concatenate([y0, y1, y2, y3], axis=-1)


# (kernel, stride, pad) of the five downsampling layers along time and along space: the stem's
# strided conv and the four max pools.
_DOWNSAMPLING_T = ((7, 2, 3), (1, 1, 0), (1, 1, 0), (3, 2, 1), (2, 2, 0))
_DOWNSAMPLING_HW = ((7, 2, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1), (2, 2, 0))


def feature_map_size(t: int, h: int, w: int) -> tuple[int, int, int]:
    """(T', H', W') of the final feature map for a T x H x W clip (32x128x128 -> 4x4x4).

    Raises ValueError for clips too small to survive the network's downsampling.
    """
    out = []
    for size, layers in ((t, _DOWNSAMPLING_T), (h, _DOWNSAMPLING_HW), (w, _DOWNSAMPLING_HW)):
        for k, s, p in layers:
            size = (size + 2 * p - k) // s + 1
        out.append(size)
    if min(out) < 1:
        raise ValueError(
            f"a {t}x{h}x{w} clip is too small for S3D (final feature map {tuple(out)}); "
            "use at least 5 frames and 32x32 pixels (the paper uses 32x128x128)"
        )
    return tuple(out)


def _scaled(width: int, multiplier: float) -> int:
    return max(1, int(round(width * multiplier)))


class S3D(nn.Module):
    """S3D backbone. x: (B, T, H, W, 3) uint8 frames (normalised here) or float clips normalised
    already -> (B, out_features) pooled feature.

    The defaults give the full network of docs/method.md §4 (1024-d output, 7,910,048 parameters).
    Small variants for CPU tests and demos scale every width by `width_multiplier` and keep only
    the first `num_mixed_3`, `num_mixed_4` and `num_mixed_5` blocks of each stage.

    Attributes:
      width_multiplier: factor on every channel count (1.0 for the real network).
      num_mixed_3: how many of Mixed_3b, 3c to keep (2 for the real network).
      num_mixed_4: how many of Mixed_4b..4f to keep (5 for the real network).
      num_mixed_5: how many of Mixed_5b, 5c to keep (2 for the real network); the pooled feature
        has the last kept block's channels.
      bn_group_size: clips per BN statistics group in training mode (None: the whole batch).
      bn_epsilon: BatchNorm's epsilon. It belongs to the weights: 1e-5 (PyTorch's default) for
        ours and CoCLR's, 1e-3 for torchvision's `s3d` weights (docs/method.md §4).
      reverse_input_channels: uint8 input has its channels reversed before normalisation; True
        for CoCLR's flow networks, which saw the stored flow (dx, dy, 128) as (128, dy, dx).
      centre_motion: uint8 flow input has each frame's median flow (the camera's motion)
        subtracted first (`preprocess.centre_motion`); for flow networks only. It belongs to the
        weights, like the two above.
      dtype: compute dtype; bfloat16 with float32 parameters gives mixed precision.
      param_dtype: parameter dtype (float32; float64 only for exact-comparison tests).
      remat: recompute each unit's inner activations in the backward pass instead of storing them
        (`nn.remat` around the stem, conv_2b/2c and every Mixed block): only unit outputs stay
        in memory, for a larger batch at the cost of about one more forward pass. Same values,
        same variables.
      pool_grad: how max pooling is computed and differentiated, all with the same values and
        gradient (see `pooling.py`): 'separable_slices' (default: 1D pools along W, H, T, each the
        maximum of strided views with a compare-and-pad gradient), 'separable' (1D reduce-windows,
        automatic gradient), 'slices' (the 3D window's views) or 'autodiff' (XLA's 3D
        reduce-window and SelectAndScatter).
      conv_lowering: 'fold' (the separable kernels as 2D convs and matmuls), 'fold_s2d' (the
        same with the stem's strided conv by space-to-depth) or 'xla3d' (3D convs); same function
        and variables, see `conv.py`.
    """

    width_multiplier: float = 1.0
    num_mixed_3: int = len(MIXED_3)
    num_mixed_4: int = len(MIXED_4)
    num_mixed_5: int = len(MIXED_5)
    bn_group_size: int | None = None
    bn_epsilon: float = DEFAULT_BN_EPSILON
    reverse_input_channels: bool = False
    centre_motion: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    pool_grad: str = DEFAULT_POOL_GRAD
    conv_lowering: str = "fold"

    @property
    def out_features(self) -> int:
        """Channels of the pooled feature: the four branch outputs of the last Mixed_5 block."""
        widths = MIXED_BLOCKS[self.mixed_blocks[-1]]
        return sum(_scaled(widths[i], self.width_multiplier) for i in (0, 2, 4, 5))

    @property
    def mixed_blocks(self) -> tuple[str, ...]:
        """Names of the Mixed blocks this variant keeps, in order."""
        kept = []
        for name, stage, n in (
            ("num_mixed_3", MIXED_3, self.num_mixed_3),
            ("num_mixed_4", MIXED_4, self.num_mixed_4),
            ("num_mixed_5", MIXED_5, self.num_mixed_5),
        ):
            if not 1 <= n <= len(stage):
                raise ValueError(f"{name} must be in 1..{len(stage)}, got {n}")
            kept += stage[:n]
        return tuple(kept)

    @property
    def is_full(self) -> bool:
        """Whether this is the paper's network, torchvision's `s3d`: every block at full width."""
        return self.width_multiplier == 1.0 and self.mixed_blocks == (*MIXED_3, *MIXED_4, *MIXED_5)

    @nn.compact
    def __call__(self, x, train: bool = False, return_map: bool = False):
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"S3D expects clips of shape (B, T, H, W, 3), got {x.shape}")
        feature_map_size(*x.shape[1:4])
        mixed_blocks = self.mixed_blocks
        if self.pool_grad not in POOL_GRADS:
            raise ValueError(f"pool_grad must be one of {sorted(POOL_GRADS)}, got {self.pool_grad!r}")
        if self.conv_lowering not in CONV_LOWERINGS:
            raise ValueError(f"conv_lowering must be one of {CONV_LOWERINGS}, got {self.conv_lowering!r}")
        max_pool3d = POOL_GRADS[self.pool_grad]
        m = self.width_multiplier
        kw = _unit_kwargs(self)
        # `train` (argument 2, counting self) selects BN's mode: static, so remat can branch on it.
        unit = (lambda cls: nn.remat(cls, static_argnums=(2,))) if self.remat else (lambda cls: cls)
        sep_conv, conv_bn, mixed = unit(SepConv), unit(ConvBN), unit(Mixed)
        if self.centre_motion:
            x = centre_motion(x)
        x = normalize_frames(x, self.reverse_input_channels).astype(self.dtype)
        x = sep_conv(_scaled(64, m), 7, 2, name="stem", **kw)(x, train)
        x = max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        x = conv_bn(_scaled(64, m), name="conv_2b", **kw)(x, train)
        x = sep_conv(_scaled(192, m), 3, name="conv_2c", **kw)(x, train)
        x = max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        for name in mixed_blocks:
            if name == MIXED_4[0]:
                x = max_pool3d(x, (3, 3, 3), (2, 2, 2), (1, 1, 1))
            elif name == MIXED_5[0]:
                x = max_pool3d(x, (2, 2, 2), (2, 2, 2), (0, 0, 0))
            widths = tuple(_scaled(w, m) for w in MIXED_BLOCKS[name])
            x = mixed(widths, pool_grad=self.pool_grad, name=name, **kw)(x, train)
        if return_map:
            return x
        # Pool in (at least) float32: the feature feeds the head, retrieval and the linear probe.
        return jnp.mean(x.astype(jnp.promote_types(jnp.float32, x.dtype)), axis=(1, 2, 3))
