"""OpenCV's CPU Dual TV-L1 optical flow (opencv_contrib `optflow/src/tvl1flow.cpp`) in JAX, batched.

The algorithm step for step as OpenCV runs it on the CPU, so the flow is the one CoCLR and the
paper trained on: a pyramid of `num_scales` levels, each `scale_step` the size of the one below
it by bilinear resizing (OpenCV's `INTER_LINEAR`: half-pixel centres, edge replication), coarse to
fine; at each level `warps` warps of the second frame and its centred gradient by OpenCV's
bicubic remap (`INTER_CUBIC`: the A = -0.75 kernel at the exact coordinates, as OpenCV 5 does,
taps outside the image read as 0), then up to `outer_iterations` x `inner_iterations`
primal-dual iterations with a 5x5 median filter of the flow before every `inner_iterations`,
stopping once the summed squared update of the flow falls to `epsilon**2 * height * width`. The
dual variables start at zero at every level; the flow is upsampled bilinearly and multiplied by
`1 / scale_step` for the next finer level.

A batch holds N pairs in one buffer shape. Each pair has its own valid size inside the buffer
(so a few padded bucket shapes serve a dataset of mixed sizes) and its own stopping: a pair's
updates are masked from the iteration at which OpenCV would stop it, so its flow does not depend
on the other pairs of its batch. Every stencil, resize, remap and median reads only inside a
pair's valid size; what lies outside it never reaches the flow.

`gamma != 0` (OpenCV's illumination term) and an initial flow are not implemented.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cvtcl_jax.flow.params import OPENCV_DEFAULTS, TVL1Params

_FLT_EPSILON = float(np.finfo(np.float32).eps)
MIN_SIZE = 3  # OpenCV's stencils assume more than two rows and columns
# Masked iterations between two tests of the loop condition (the result does not depend on it):
# on a GPU each test is a round trip to the host; on the CPU more only lengthen the compile.
ACCELERATOR_STEPS_PER_CHECK = 5  # a guess until a GPU run sweeps it; 1 on a CPU


def pyramid_sizes(height: int, width: int, params: TVL1Params = OPENCV_DEFAULTS) -> list[tuple[int, int]]:
    """The (height, width) of each pyramid level OpenCV uses for a frame of this size, finest first.

    OpenCV rounds each level's size to nearest (`cvRound`, ties to even, as Python's `round`) and
    drops the levels below 16 pixels on either side.
    """
    sizes = [(height, width)]
    for _ in range(1, params.num_scales):
        h, w = sizes[-1]
        h, w = round(h * params.scale_step), round(w * params.scale_step)
        if h < 16 or w < 16:
            break
        sizes.append((h, w))
    return sizes


def _cubic_weights(f: jax.Array) -> list[jax.Array]:
    """OpenCV's bicubic weights (A = -0.75) of the four taps around a fractional offset f."""
    a = np.float32(-0.75)
    c0 = ((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a
    c1 = ((a + 2) * f - (a + 3)) * f * f + 1
    c2 = ((a + 2) * (1 - f) - (a + 3)) * (1 - f) * (1 - f) + 1
    return [c0, c1, c2, 1 - c0 - c1 - c2]


def _median_network(n: int = 25) -> tuple[list[tuple[str, int, int, int]], int]:
    """Min/max operations that compute the median of n values, and the id of the result.

    Batcher's odd-even merge sort of the next power of two, the extra wires +inf, pruned to the
    comparators the median depends on. Values 0..n-1 are the inputs; each op (kind, out, a, b)
    with kind 'min' or 'max' makes value `out` from values a and b.
    """
    size = 1 << (n - 1).bit_length()
    comparators = []

    def merge(lo, length, r):
        step = r * 2
        if step < length:
            merge(lo, length, step)
            merge(lo + r, length, step)
            comparators.extend((i, i + r) for i in range(lo + r, lo + length - r, step))
        else:
            comparators.append((lo, lo + r))

    def sort(lo, length):
        if length > 1:
            half = length // 2
            sort(lo, half)
            sort(lo + half, half)
            merge(lo, length, 1)

    sort(0, size)
    # value[w]: the id of the value on wire w; None for the +inf wires, against which a comparator
    # is a no-op (inf on the max side) or a swap.
    value: list[int | None] = [w if w < n else None for w in range(size)]
    next_id = n
    ops = []
    for i, j in comparators:
        if value[j] is None:
            continue
        if value[i] is None:
            value[i], value[j] = value[j], None
            continue
        ops.append(("min", next_id, value[i], value[j]))
        ops.append(("max", next_id + 1, value[i], value[j]))
        value[i], value[j] = next_id, next_id + 1
        next_id += 2
    needed = {value[n // 2]}
    kept = []
    for op in reversed(ops):
        if op[1] in needed:
            kept.append(op)
            needed.update(op[2:])
    return kept[::-1], value[n // 2]


_MEDIAN25 = _median_network(25)


def median_of_25(values):
    """The elementwise median of 25 same-shaped arrays, by min/max operations only."""
    ops, out = _MEDIAN25
    held = dict(enumerate(values))
    for kind, made, a, b in ops:
        held[made] = (jnp.minimum if kind == "min" else jnp.maximum)(held[a], held[b])
    return held[out]


def _clamped_shifts(u: jax.Array, axis: int, size: jax.Array) -> list[jax.Array]:
    """u[clip(i + k, 0, size - 1)] along `axis` for k = -2..2, from rolls (no gathers).

    u: (N, H, W); size: (N,) each pair's valid extent along the axis; indices past it repeat
    the last valid value, as OpenCV's replicated border does.
    """
    i = jnp.arange(u.shape[axis])
    i = i[None, :, None] if axis == 1 else i[None, None, :]
    last = size[:, None, None] - 1
    plus1 = jnp.where(i + 1 <= last, _shift(u, 1, axis), u)
    plus2 = jnp.where(i + 2 <= last, _shift(u, 2, axis), plus1)
    minus1 = jnp.where(i >= 1, _shift(u, -1, axis), u)
    minus2 = jnp.where(i >= 2, _shift(u, -2, axis), minus1)
    return [minus2, minus1, u, plus1, plus2]


def _median5x5(u: jax.Array, heights: jax.Array, widths: jax.Array) -> jax.Array:
    """5x5 median of (N, H, W) with OpenCV's replicated border at each pair's valid size."""
    return median_of_25(
        [v for row in _clamped_shifts(u, 1, heights) for v in _clamped_shifts(row, 2, widths)]
    )


def _index_grids(shape, heights, widths):
    """Row / column iotas (1, H, 1), (1, 1, W) and each pair's (N, 1, 1) valid height and width."""
    _, h, w = shape
    return (
        jnp.arange(h)[None, :, None],
        jnp.arange(w)[None, None, :],
        heights[:, None, None],
        widths[:, None, None],
    )


def _shift(x: jax.Array, offset: int, axis: int) -> jax.Array:
    """x shifted so that out[i] = x[i + offset] along `axis` (wrapped values are never used)."""
    return jnp.roll(x, -offset, axis=axis)


def centered_gradient(src, heights, widths):
    """OpenCV's `centeredGradient`: central differences, one-sided halves at the borders."""
    y, x, h, w = _index_grids(src.shape, heights, widths)
    right = jnp.where(x + 1 < w, _shift(src, 1, 2), src)
    left = jnp.where(x >= 1, _shift(src, -1, 2), src)
    down = jnp.where(y + 1 < h, _shift(src, 1, 1), src)
    up = jnp.where(y >= 1, _shift(src, -1, 1), src)
    return 0.5 * (right - left), 0.5 * (down - up)


def forward_gradient(src, heights, widths):
    """OpenCV's `forwardGradient`: forward differences, zero on the last column / row."""
    y, x, h, w = _index_grids(src.shape, heights, widths)
    dx = jnp.where(x + 1 < w, _shift(src, 1, 2) - src, 0.0)
    dy = jnp.where(y + 1 < h, _shift(src, 1, 1) - src, 0.0)
    return dx, dy


def divergence(v1, v2):
    """OpenCV's `divergence`: backward differences, the first column / row taken as is."""
    shape = v1.shape
    y = jnp.arange(shape[1])[None, :, None]
    x = jnp.arange(shape[2])[None, None, :]
    v1x = jnp.where(x >= 1, v1 - _shift(v1, -1, 2), v1)
    v2y = jnp.where(y >= 1, v2 - _shift(v2, -1, 1), v2)
    return v1x + v2y


def resize_linear(src, src_heights, src_widths, out_shape, scale_y, scale_x):
    """OpenCV's `resize` with `INTER_LINEAR` of float images: rows first, then columns.

    src: (N, H, W); src_heights, src_widths: (N,) the valid size; out_shape: (H', W') the buffer
    of the result; scale_y, scale_x: (N,) float32 source pixels per destination pixel.
    Returns (N, H', W').
    """

    def taps(n_out, scale, size):
        f = (jnp.arange(n_out, dtype=jnp.float32)[None, :] + 0.5) * scale[:, None] - 0.5
        s = jnp.floor(f)
        f = f - s
        s = s.astype(jnp.int32)
        f = jnp.where((s < 0) | (s >= size[:, None] - 1), 0.0, f)
        s = jnp.clip(s, 0, size[:, None] - 1)
        return s, jnp.minimum(s + 1, size[:, None] - 1), f  # each (N, n_out)

    x0, x1, fx = taps(out_shape[1], scale_x, src_widths)
    rows = (
        jnp.take_along_axis(src, x0[:, None, :], axis=2) * (1.0 - fx[:, None, :])
        + jnp.take_along_axis(src, x1[:, None, :], axis=2) * fx[:, None, :]
    )
    y0, y1, fy = taps(out_shape[0], scale_y, src_heights)
    return (
        jnp.take_along_axis(rows, y0[:, :, None], axis=1) * (1.0 - fy[:, :, None])
        + jnp.take_along_axis(rows, y1[:, :, None], axis=1) * fy[:, :, None]
    )


def remap_cubic(images, u1, u2, heights, widths):
    """OpenCV's `remap(..., INTER_CUBIC, BORDER_CONSTANT 0)` of C images at (x + u1, y + u2).

    OpenCV 5 interpolates at the exact float coordinates (OpenCV 4 rounded them to 1/32 pixel
    first); taps outside a pair's valid size read 0.
    images: (N, C, H, W); u1, u2: (N, H, W). Returns (N, C, H, W).
    """
    n, c, h, w = images.shape
    y, x, hh, ww = _index_grids(u1.shape, heights, widths)
    map_x = x.astype(jnp.float32) + u1
    map_y = y.astype(jnp.float32) + u2
    fx, fy = jnp.floor(map_x), jnp.floor(map_y)
    wx, wy = _cubic_weights(map_x - fx), _cubic_weights(map_y - fy)
    # Clipped so that far-off coordinates stay integers; every tap there is outside anyway.
    sx = jnp.clip(fx, -4, w + 4).astype(jnp.int32) - 1
    sy = jnp.clip(fy, -4, h + 4).astype(jnp.int32) - 1
    flat = images.reshape(n, c, h * w)
    total = jnp.zeros((n, c, h, w), jnp.float32)
    for i in range(4):
        yy = sy + i
        row_ok = (yy >= 0) & (yy < hh)
        for j in range(4):
            xx = sx + j
            ok = row_ok & (xx >= 0) & (xx < ww)
            index = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).reshape(n, 1, h * w)
            tap = jnp.take_along_axis(flat, index, axis=2).reshape(n, c, h, w)
            total = total + tap * jnp.where(ok, wy[i] * wx[j], 0.0)[:, None]
    return total


def _data_step(u1, u2, rho_c, i1wx, i1wy, grad, l_t):
    """OpenCV's thresholding of the data term (its `estimateV`): the flow moved towards where the
    warped image's linearised residual rho = rho_c + grad(I1w) . u is zero, by at most l_t * grad.
    All (N, H, W); returns the moved (v1, v2)."""
    rho = rho_c + (i1wx * u1 + i1wy * u2)
    below, above = rho < -l_t * grad, rho > l_t * grad
    inside = grad > _FLT_EPSILON
    fi = -rho / jnp.where(inside, grad, 1.0)
    d1 = jnp.where(below, l_t * i1wx, jnp.where(above, -l_t * i1wx, jnp.where(inside, fi * i1wx, 0.0)))
    d2 = jnp.where(below, l_t * i1wy, jnp.where(above, -l_t * i1wy, jnp.where(inside, fi * i1wy, 0.0)))
    return u1 + d1, u2 + d2


def _dual_step(u, p1, p2, heights, widths, taut):
    """OpenCV's `estimateDualVariables` for one flow component u: the dual pair (p1, p2) moved
    along u's forward gradient, Chambolle's fixed-point step. All (N, H, W)."""
    ux, uy = forward_gradient(u, heights, widths)
    norm = 1.0 + taut * jnp.hypot(ux, uy)
    return (p1 + taut * ux) / norm, (p2 + taut * uy) / norm


def _one_scale(i0, i1, u1, u2, heights, widths, epsilons, active, params: TVL1Params, steps_per_check: int):
    """OpenCV's `procOneScale` for a batch: `warps` warps of primal-dual iterations at one level.

    i0, i1, u1, u2: (N, H, W) float32; heights, widths: (N,) int32; epsilons: (N,) the stopping
    threshold; active: (N,) whether the pair has this level. Returns the new (u1, u2).
    """
    l_t = np.float32(params.lambda_ * params.theta)
    taut = np.float32(params.tau / params.theta)
    theta = np.float32(params.theta)
    iterations = params.outer_iterations * params.inner_iterations
    y, x, hh, ww = _index_grids(i0.shape, heights, widths)
    valid = (y < hh) & (x < ww)
    i1x, i1y = centered_gradient(i1, heights, widths)
    sampled = jnp.stack([i1, i1x, i1y], axis=1)
    mask = active[:, None, None]

    def median(u):
        if params.median_filtering <= 1:
            return u
        return jax.lax.cond(
            # jnp.remainder keeps the predicate a scalar int op on every backend.
            jnp.remainder(u[0], params.inner_iterations) == 0,
            lambda v: (_median5x5(v[1], heights, widths), _median5x5(v[2], heights, widths)),
            lambda v: (v[1], v[2]),
            u,
        )

    def warp(_, carry):
        u1, u2, p11, p12, p21, p22 = carry
        i1w, i1wx, i1wy = jnp.moveaxis(remap_cubic(sampled, u1, u2, heights, widths), 1, 0)
        grad = i1wx * i1wx + i1wy * i1wy
        rho_c = i1w - i1wx * u1 - i1wy * u2 - i0

        def step(state):
            n, running, u1, u2, p11, p12, p21, p22 = state
            u1k, u2k = median((n, u1, u2))
            v1, v2 = _data_step(u1k, u2k, rho_c, i1wx, i1wy, grad, l_t)
            new_u1 = v1 + theta * divergence(p11, p12)
            new_u2 = v2 + theta * divergence(p21, p22)
            error = jnp.sum(jnp.where(valid, (new_u1 - u1k) ** 2 + (new_u2 - u2k) ** 2, 0.0), axis=(1, 2))
            new = (
                new_u1,
                new_u2,
                *_dual_step(new_u1, p11, p12, heights, widths, taut),
                *_dual_step(new_u2, p21, p22, heights, widths, taut),
            )
            on = running[:, None, None]
            kept = tuple(jnp.where(on, a, b) for a, b in zip(new, (u1, u2, p11, p12, p21, p22), strict=True))
            # A pair runs while OpenCV's loops would: error above the threshold, iterations left.
            return (n + 1, running & (error > epsilons) & (n + 1 < iterations), *kept)

        def keep_going(state):
            return jnp.any(state[1])

        def steps(state):
            # Several masked steps per test of the loop condition: fewer host round trips on a GPU.
            for _ in range(steps_per_check):
                state = step(state)
            return state

        state = jax.lax.while_loop(keep_going, steps, (jnp.int32(0), active, u1, u2, p11, p12, p21, p22))
        return state[2:]

    zeros = jnp.zeros_like(i0)
    u1, u2, *_ = jax.lax.fori_loop(0, params.warps, warp, (u1, u2, zeros, zeros, zeros, zeros))
    return jnp.where(mask, u1, 0.0), jnp.where(mask, u2, 0.0)


@functools.partial(jax.jit, static_argnames=("params", "steps_per_check"))
def _tvl1_batch(
    frame0, frame1, heights, widths, epsilons, levels, scale_up, params: TVL1Params, steps_per_check: int
):
    """The jitted pyramid. heights, widths, epsilons, scale_up: (N, L); levels: (N,) int32."""
    n, h, w = frame0.shape
    buffers = pyramid_sizes(h, w, params)
    down = jnp.full((n,), 1.0 / params.scale_step, jnp.float32)
    i0s, i1s = [frame0.astype(jnp.float32)], [frame1.astype(jnp.float32)]
    for s in range(1, len(buffers)):
        for images in (i0s, i1s):
            images.append(
                resize_linear(images[-1], heights[:, s - 1], widths[:, s - 1], buffers[s], down, down)
            )
    u1 = u2 = jnp.zeros((n, *buffers[-1]), jnp.float32)
    for s in reversed(range(len(buffers))):
        active = s < levels
        u1, u2 = _one_scale(
            i0s[s],
            i1s[s],
            u1,
            u2,
            heights[:, s],
            widths[:, s],
            epsilons[:, s],
            active,
            params,
            steps_per_check,
        )
        if s == 0:
            break
        up_y, up_x = scale_up[:, 2 * s], scale_up[:, 2 * s + 1]
        flow = jnp.stack([u1, u2], axis=1).reshape(2 * n, *buffers[s])
        twice = functools.partial(jnp.repeat, repeats=2, axis=0)  # (u1, u2) of each pair, in turn
        flow = resize_linear(
            flow, twice(heights[:, s]), twice(widths[:, s]), buffers[s - 1], twice(up_y), twice(up_x)
        )
        flow = flow.reshape(n, 2, *buffers[s - 1]) * np.float32(1.0 / params.scale_step)
        u1, u2 = flow[:, 0], flow[:, 1]
    y, x, hh, ww = _index_grids(u1.shape, heights[:, 0], widths[:, 0])
    return jnp.where(((y < hh) & (x < ww))[..., None], jnp.stack([u1, u2], axis=-1), 0.0)


def _level_arrays(sizes: np.ndarray, buffer: tuple[int, int], params: TVL1Params):
    """Per-pair level sizes, stopping thresholds and upsampling scales for `_tvl1_batch`."""
    n_levels = len(pyramid_sizes(*buffer, params))
    n = len(sizes)
    heights = np.zeros((n, n_levels), np.int32)
    widths = np.zeros((n, n_levels), np.int32)
    epsilons = np.zeros((n, n_levels), np.float32)
    scale_up = np.ones((n, 2 * n_levels), np.float32)
    levels = np.zeros(n, np.int32)
    buffers = pyramid_sizes(*buffer, params)
    for k, (h, w) in enumerate(sizes):
        chain = pyramid_sizes(int(h), int(w), params)
        levels[k] = len(chain)
        # The levels a pair lacks stay inactive; the whole buffer keeps their indices in bounds.
        chain = chain + buffers[len(chain) :]
        for s, (hs, ws) in enumerate(chain):
            heights[k, s], widths[k, s] = hs, ws
            epsilons[k, s] = np.float32(params.epsilon * params.epsilon * hs * ws)
            if s > 0:
                # OpenCV resizes to a given size: source pixels per destination pixel 1 / (dst / src).
                finer = chain[s - 1]
                scale_up[k, 2 * s] = 1.0 / (finer[0] / hs)
                scale_up[k, 2 * s + 1] = 1.0 / (finer[1] / ws)
    return heights, widths, epsilons, levels, scale_up


def tvl1_flow(
    frame0, frame1, sizes=None, params: TVL1Params = OPENCV_DEFAULTS, steps_per_check: int | None = None
) -> jax.Array:
    """Dual TV-L1 optical flow from frame0 to frame1 for a batch of grayscale pairs, as OpenCV's.

    frame0, frame1: (N, H, W) uint8 grayscale (one buffer shape for the batch; compiled once per
      (N, H, W) and params).
    sizes: optional (N, 2) ints, each pair's (height, width) in the top-left corner of the buffer
      (default: every pair fills it). The result is the flow of that crop alone.
    steps_per_check: masked iterations per test of the stopping condition (speed only; default
      by backend).
    Returns (N, H, W, 2) float32 (dx, dy) in pixels, zero outside each pair's size.
    """
    frame0, frame1 = np.asarray(frame0), np.asarray(frame1)
    if frame0.shape != frame1.shape:
        raise ValueError(f"frame0 and frame1 differ in shape: {frame0.shape} vs {frame1.shape}")
    if frame0.ndim != 3:
        raise ValueError(
            f"expected grayscale frames of shape (N, H, W), got {frame0.shape}; convert colour frames "
            "with cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) and stack pairs along the first axis"
        )
    if frame0.dtype != np.uint8 or frame1.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frame0.dtype} and {frame1.dtype}")
    n, h, w = frame0.shape
    if n == 0 or h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(
            f"expected at least one pair of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {frame0.shape}"
        )
    sizes = np.tile([h, w], (n, 1)) if sizes is None else np.asarray(sizes, np.int64).reshape(n, 2)
    if (sizes < MIN_SIZE).any() or (sizes[:, 0] > h).any() or (sizes[:, 1] > w).any():
        raise ValueError(
            f"sizes must lie between {MIN_SIZE} and the buffer's ({h}, {w}); got {sizes.tolist()}"
        )
    heights, widths, epsilons, levels, scale_up = _level_arrays(sizes, (h, w), params)
    if steps_per_check is None:
        steps_per_check = 1 if jax.default_backend() == "cpu" else ACCELERATOR_STEPS_PER_CHECK
    return _tvl1_batch(
        frame0,
        frame1,
        heights,
        widths,
        epsilons,
        levels,
        scale_up,
        params=params,
        steps_per_check=steps_per_check,
    )
