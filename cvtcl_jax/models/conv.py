"""S3D's 3D convolutions, lowered as 3D convolutions or folded into 2D convolutions and matmuls.

Every convolution of S3D is separable by construction: (1, k, k) spatial, (k, 1, 1) temporal or
(1, 1, 1) pointwise. Such a kernel needs no 3D convolution: a (1, k, k) conv is a 2D conv over
frames with time folded into the batch, a (k, 1, 1) conv a 2D conv over (time, pixels) with a
(k, 1) kernel, a (1, 1, 1) conv a matrix product over channels. Convolution libraries (cuDNN,
XNNPACK) put most of their tuning into 2D convolutions and matrix products, so 'fold' computes the
same function (same parameters, same values up to summation order) through those kernels;
'xla3d' hands every kernel to XLA as the 3D convolution it is. On the 2-core CPU the folded init
step is 4x faster; on a GPU `bench/train_step.py --conv_lowering` compares them (docs/performance.md).

'fold_s2d' is 'fold' with the stem's spatial conv (7x7, stride 2, on 3 input channels) computed
by space-to-depth, as MLPerf's ResNets do on TPUs: each 2x2 block of pixels becomes one pixel of
4 x 3 channels and the kernel a 4x4 stride-1 kernel over those, the same sums. A conv on 3 channels
presumably leaves most of a GPU's tensor-core lanes empty (on an H200 the stem ran at ~35 TFLOP/s,
27% of the init step's kernel time); whether 12 channels without a stride run faster is what
`bench/train_step.py --conv_lowering fold fold_s2d` measures (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

CONV_LOWERINGS = ("fold", "fold_s2d", "xla3d")
# 'fold_s2d' rewrites stride-2 spatial convs on at most this many input channels (the stem).
SPACE_TO_DEPTH_MAX_CHANNELS = 4


def _conv(x, kernel, strides, padding):
    """Channels-last conv of any rank: x (B, *spatial, C), kernel (*window, C, F)."""
    spatial = "DHW"[-(kernel.ndim - 2) :]
    dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dims)


def _symmetric_padding(window):
    """PyTorch's padding for odd kernels: k // 2 on both sides of each axis."""
    return [(k // 2, k // 2) for k in window]


def conv2d_space_to_depth(x, kernel):
    """Stride-2 conv with symmetric k // 2 padding, computed as a stride-1 conv over 2x2 blocks.

    x (N, H, W, C), kernel (kh, kw, C, F) with odd kh, kw -> (N, H', W', F), the same values as
    `_conv(x, kernel, (2, 2), _symmetric_padding((kh, kw)))`. Kernel tap (2a + r, 2b + s) meets
    padded pixel (2(o + a) + r, 2(p + b) + s), i.e. channel block (r, s) of block pixel (o + a,
    p + b): the kernel, zero-padded to even sides, is regrouped the same way as the pixels.
    """
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    out = [(size + 2 * (k // 2) - k) // 2 + 1 for size, k in ((h, kh), (w, kw))]
    blocks = [(k + 1) // 2 for k in (kh, kw)]
    # Padded at the end to the 2 * (out + blocks - 1) rows/columns the blocks cover: k // 2 as the
    # symmetric padding, one more for odd sizes, which only ever meets the kernel's zero padding.
    padded = [2 * (o + b - 1) for o, b in zip(out, blocks, strict=True)]
    x = jnp.pad(x, ((0, 0), (kh // 2, padded[0] - h - kh // 2), (kw // 2, padded[1] - w - kw // 2), (0, 0)))
    x = x.reshape((n, padded[0] // 2, 2, padded[1] // 2, 2, c)).transpose((0, 1, 3, 2, 4, 5))
    x = x.reshape((n, padded[0] // 2, padded[1] // 2, 4 * c))
    kernel = jnp.pad(kernel, ((0, 2 * blocks[0] - kh), (0, 2 * blocks[1] - kw), (0, 0), (0, 0)))
    kernel = kernel.reshape((blocks[0], 2, blocks[1], 2, c, f)).transpose((0, 2, 1, 3, 4, 5))
    return _conv(x, kernel.reshape((*blocks, 4 * c, f)), (1, 1), "VALID")


def conv3d_folded(x, kernel, strides, space_to_depth: bool = False):
    """(B, T, H, W, C) x (kt, kh, kw, C, F) -> (B, T', H', W', F), PyTorch's symmetric k // 2 padding.

    Separable kernels go through 2D convs or a matmul (module docstring); any other kernel through
    a 3D conv. space_to_depth: a (1, k, k) kernel with spatial stride 2 on at most
    SPACE_TO_DEPTH_MAX_CHANNELS channels goes through `conv2d_space_to_depth`.
    """
    kt, kh, kw = kernel.shape[:3]
    st, sh, sw = strides
    b, t, h, w, c = x.shape
    if (kt, kh, kw) == (1, 1, 1):
        x = x[:, ::st, ::sh, ::sw]
        return jnp.einsum("bthwc,cf->bthwf", x, kernel[0, 0, 0])
    if kt == 1:
        x = x[:, ::st].reshape((-1, h, w, c))
        if space_to_depth and (sh, sw) == (2, 2) and c <= SPACE_TO_DEPTH_MAX_CHANNELS:
            y = conv2d_space_to_depth(x, kernel[0])
        else:
            y = _conv(x, kernel[0], (sh, sw), _symmetric_padding((kh, kw)))
        return y.reshape((b, -1, *y.shape[1:]))
    if (kh, kw) == (1, 1):
        x = x[:, :, ::sh, ::sw]
        hw = x.shape[2:4]
        y = _conv(x.reshape((b, t, -1, c)), kernel[:, 0], (st, 1), _symmetric_padding((kt, 1)))
        return y.reshape((b, y.shape[1], *hw, y.shape[-1]))
    return _conv(x, kernel, strides, _symmetric_padding((kt, kh, kw)))


class Conv3d(nn.Module):
    """Bias-free 3D conv with PyTorch's symmetric padding. (B, T, H, W, C) -> (B, T', H', W', F).

    The variable is `kernel` of shape (*kernel_size, C, F), as in `flax.linen.Conv`, whichever
    lowering computes it, so checkpoints and torchvision weights do not depend on the choice.
    """

    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int, int] = (1, 1, 1)
    lowering: str = "fold"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
        if self.lowering in ("fold", "fold_s2d"):
            return conv3d_folded(x, kernel, self.strides, space_to_depth=self.lowering == "fold_s2d")
        if self.lowering == "xla3d":
            return _conv(x, kernel, self.strides, _symmetric_padding(self.kernel_size))
        raise ValueError(f"conv lowering must be one of {CONV_LOWERINGS}, got {self.lowering!r}")
