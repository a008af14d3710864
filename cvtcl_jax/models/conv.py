"""S3D's 3D convolutions, lowered as 3D convolutions or folded into 2D convolutions and matmuls.

Every convolution of S3D is separable by construction: (1, k, k) spatial, (k, 1, 1) temporal or
(1, 1, 1) pointwise. Such a kernel needs no 3D convolution: a (1, k, k) conv is a 2D conv over
frames with time folded into the batch, a (k, 1, 1) conv a 2D conv over (time, pixels) with a
(k, 1) kernel, a (1, 1, 1) conv a matrix product over channels. Convolution libraries (cuDNN,
XNNPACK) put most of their tuning into 2D convolutions and matrix products, so 'fold' computes the
same function (same parameters, same values up to summation order) through those kernels;
'xla3d' hands every kernel to XLA as the 3D convolution it is. On the 2-core CPU the folded init
step is 4x faster; on a GPU `bench/train_step.py --conv_lowering` compares them (README).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

CONV_LOWERINGS = ("fold", "xla3d")


def _conv(x, kernel, strides, padding):
    """Channels-last conv of any rank: x (B, *spatial, C), kernel (*window, C, F)."""
    spatial = "DHW"[-(kernel.ndim - 2) :]
    dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dims)


def _symmetric_padding(window):
    """PyTorch's padding for odd kernels: k // 2 on both sides of each axis."""
    return [(k // 2, k // 2) for k in window]


def conv3d_folded(x, kernel, strides):
    """(B, T, H, W, C) x (kt, kh, kw, C, F) -> (B, T', H', W', F), PyTorch's symmetric k // 2 padding.

    Separable kernels go through 2D convs or a matmul (module docstring); any other kernel through
    a 3D conv.
    """
    kt, kh, kw = kernel.shape[:3]
    st, sh, sw = strides
    b, t, h, w, c = x.shape
    if (kt, kh, kw) == (1, 1, 1):
        x = x[:, ::st, ::sh, ::sw]
        return jnp.einsum("bthwc,cf->bthwf", x, kernel[0, 0, 0])
    if kt == 1:
        x = x[:, ::st].reshape((-1, h, w, c))
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
        if self.lowering == "fold":
            return conv3d_folded(x, kernel, self.strides)
        if self.lowering == "xla3d":
            return _conv(x, kernel, self.strides, _symmetric_padding(self.kernel_size))
        raise ValueError(f"conv lowering must be one of {CONV_LOWERINGS}, got {self.lowering!r}")
