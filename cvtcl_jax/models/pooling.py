"""3D max pooling, four ways with the same values and gradient (`POOL_GRADS`, `S3D.pool_grad`).

'autodiff' is XLA's 3D reduce-window and its automatic gradient; 'slices' the same window as
elementwise ops; 'separable' and 'separable_slices' (the default) pool along W, then H, then T
with 1D windows, each computed the one or the other way.

The automatic gradient of `lax.reduce_window(max)` is a SelectAndScatter. XLA expands it into a
variadic reduce-window that carries an s32 index array per dimension (built from iotas) plus a
scatter, which runs with atomics on the GPU: at the paper's size the pools were the largest part
of the step's kernel time. `max_pool3d_slices` has the same values and the same gradient (checked
in tests/test_models.py) computed with elementwise ops, slices and pads alone, which XLA fuses into
a few loops on every backend: the output is the maximum of the K = prod(window) strided views of
the padded input; the gradient compares those views with the output, keeps for each output the
first window position holding the maximum (window order, like SelectAndScatter with `>=`,
PyTorch's MaxPool3d and the automatic gradient) and sends the output gradient back through the
transpose of each strided view, which is a pad. The whole 3x3x3 window is 27 views per output; one
axis at a time (`max_pool3d_separable`) it is 3 views per axis, faster than 'autodiff' on the CPU
and the GPU with about half of XLA's memory, hence the default. The measurements:
docs/performance.md.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax


def max_pool3d(x, window, strides, pad):
    """PyTorch-style MaxPool3d (padding with -inf, no ceil mode); automatic gradient.

    x: (B, T, H, W, C); window, strides, pad: 3-tuples over (T, H, W).
    """
    padding = [(0, 0)] + [(p, p) for p in pad] + [(0, 0)]
    # A scalar -inf init lets JAX use the reduce_window_max primitive.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), padding)


def _views(xp, out_shape, window, strides):
    """[(offset, view)]: for each of the prod(window) offsets (window order), the strided view of
    the padded input xp that holds, at output position q, the input at window offset of q."""
    views = []
    for offset in itertools.product(*(range(k) for k in window)):
        ends = (o + (n - 1) * s + 1 for o, n, s in zip(offset, out_shape[1:4], strides, strict=True))
        limit = (out_shape[0], *ends, out_shape[4])
        views.append((offset, lax.slice(xp, (0, *offset, 0), limit, (1, *strides, 1))))
    return views


def _padded_views(x, window, strides, pad):
    """(padded input, _views of it): x padded with -inf as PyTorch's MaxPool3d pads (no ceil mode)."""
    padding = [(0, 0, 0)] + [(p, p, 0) for p in pad] + [(0, 0, 0)]
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), padding)
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:4], window, strides, strict=True)]
    return xp, _views(xp, (x.shape[0], *out, x.shape[4]), window, strides)


def _max_of_views(x, window, strides, pad):
    """max_pool3d's values (a maximum is exact in any dtype) as an elementwise maximum of views."""
    _, views = _padded_views(x, window, strides, pad)
    return functools.reduce(jnp.maximum, (view for _, view in views))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool3d_slices(x, window, strides, pad):
    """`max_pool3d` as the maximum of strided views, with the gradient of the module docstring
    (reverse mode only)."""
    return _max_of_views(x, window, strides, pad)


def _slices_fwd(x, window, strides, pad):
    y = _max_of_views(x, window, strides, pad)
    return y, (x, y)


def _slices_bwd(window, strides, pad, residuals, g):
    x, y = residuals
    xp, views = _padded_views(x, window, strides, pad)
    # first[q] = index of the first window offset whose input equals the maximum y[q].
    first = jnp.full(y.shape, -1, jnp.int8 if math.prod(window) < 128 else jnp.int32)
    for k, (_, view) in reversed(list(enumerate(views))):
        first = jnp.where(view == y, jnp.asarray(k, first.dtype), first)
    grad = jnp.zeros(xp.shape, g.dtype)
    for k, (offset, _) in enumerate(views):
        # The transpose of a strided view is a pad: low = offset, interior = stride - 1.
        picked = jnp.where(first == k, g, jnp.zeros((), g.dtype))
        config = [(0, 0, 0)]
        for o, n, s, size in zip(offset, y.shape[1:4], strides, xp.shape[1:4], strict=True):
            config.append((o, size - o - (n - 1) * s - 1, s - 1))
        config.append((0, 0, 0))
        grad = grad + lax.pad(picked, jnp.zeros((), g.dtype), config)
    crop = tuple(slice(p, p + n) for p, n in zip(pad, x.shape[1:4], strict=True))
    return (grad[(slice(None), *crop, slice(None))],)


max_pool3d_slices.defvjp(_slices_fwd, _slices_bwd)


def axis_stages(window, strides, pad):
    """[(window, strides, pad)]: the 1D pools, W then H then T, whose composition is the 3D pool;
    axes the pool leaves alone (window 1, stride 1, no padding) are skipped."""
    stages = []
    for axis in (2, 1, 0):
        if (window[axis], strides[axis], pad[axis]) == (1, 1, 0):
            continue
        w, s, p = [1, 1, 1], [1, 1, 1], [0, 0, 0]
        w[axis], s[axis], p[axis] = window[axis], strides[axis], pad[axis]
        stages.append((tuple(w), tuple(s), tuple(p)))
    return stages


def max_pool3d_separable(x, window, strides, pad, pool=max_pool3d):
    """`max_pool3d` as 1D pools along W, then H, then T (`pool` computes each).

    The maximum over a box is the maximum over each axis in turn, so the values are the same, and
    so is the gradient: with each 1D pool sending it to the first maximum of its window, the chain
    picks the first in (T, H, W) order, the window order of the 3D pool. A 3x3x3 window then costs
    3 + 3 + 3 instead of 27 window reads per output. Only the input is kept for the backward pass
    (`jax.checkpoint`: the two intermediates are recomputed there), as for the 3D pool.
    """

    def stages(v):
        for stage in axis_stages(window, strides, pad):
            v = pool(v, *stage)
        return v

    return jax.checkpoint(stages)(x)


POOL_GRADS = {
    "autodiff": max_pool3d,
    "slices": max_pool3d_slices,
    "separable": max_pool3d_separable,
    "separable_slices": functools.partial(max_pool3d_separable, pool=max_pool3d_slices),
}
DEFAULT_POOL_GRAD = "separable_slices"  # S3D's, the configs' and the bench's; why: the docstring above
