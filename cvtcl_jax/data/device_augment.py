"""The tail of the clip augmentations (docs/method.md §5) on the accelerator, in JAX (no TensorFlow).

`data.aug.on_device` (augment.AugmentConfig) chooses how much of each clip's augmentation the
devices do; the tf.data pipeline ships the rest of the work in the batch:

  'color'   clips cropped, resized and flipped as uint8, with their drawn colour parameters packed
            in a (COLOR_PARAMS,) float32 vector under `<clip>_color`;
  'resize'  clips as their whole decoded frames (uint8, padded to one static shape), with their
            crop window and flip in a (WINDOW_PARAMS,) int32 vector under `<clip>_window` (and
            `<clip>_color`); the anchor is not shipped, its frames are segments[:, 0].

`make_batch_augmenter` finishes them on the devices, on the sharded batch before the step:
bilinear resize (tf.image.resize's half-pixel taps, no antialiasing), horizontal flip (negating a
flow's dx), colour jitter (brightness, contrast, saturation, hue in the drawn order), grayscale and
Gaussian blur, the same operations as augment.py's (TensorFlow's definitions of each), ending in
the same uint8 rounding, so the step sees the same kind of batch either way. Each operation agrees
with TensorFlow's to one level on the same input; 'color' rounds the clip to uint8 once more
before the colour operations (a few levels at most), 'resize' does not (tests/test_data_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh

from cvtcl_jax.sharding import batch_sharding

# Layout of the packed parameter vector (augment.color_vector writes it).
JITTER, GRAY, BLUR, SIGMA = 0, 1, 2, 3
FACTORS = slice(4, 8)  # brightness, contrast, saturation, hue
ORDER = slice(8, 12)  # the jitter operations' order, as in torchvision's ColorJitter
COLOR_PARAMS = 12

# data.aug.on_device's settings (augment.AugmentConfig; here so that TF-free benchmarks can name them).
ON_DEVICE = ("none", "color", "resize")

# Layout of the packed window vector (augment.window_vector writes it): the crop window inside
# the shipped frames, whether to flip, and whether the clip is flow (a flip negates its dx).
WIN_Y, WIN_X, WIN_H, WIN_W, WIN_FLIP, WIN_FLOW = range(6)
WINDOW_PARAMS = 6
_COLOR_SUFFIX, _WINDOW_SUFFIX = "_color", "_window"
# Clips shipped without frames of their own: (the clip whose frames they use, index on axis 1).
SHARED_FRAMES = {"anchor": ("segments", 0)}

# tf.image.rgb_to_grayscale's weights.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _value_and_saturation(x, keepdims: bool):
    """(..., 3) RGB in [0, 1] -> value, max - min, saturation (..., 1) or (...,), as
    tf.image.rgb_to_hsv."""
    v = jnp.max(x, axis=-1, keepdims=keepdims)
    d = v - jnp.min(x, axis=-1, keepdims=keepdims)
    return v, d, jnp.where(v > 0, d / jnp.where(v > 0, v, 1.0), 0.0)


def _hue(x, d):
    """(..., 3) RGB in [0, 1] and its max - min (...,) -> hue (...,) in [0, 1), as
    tf.image.rgb_to_hsv.

    The hue's sector is the first channel holding the maximum (r, then g, then b on ties, as
    TensorFlow's `v == r`, `v == g` tests), taken by argmax rather than by comparing `v` with the
    channels: XLA may compute x's elementwise producer separately for `max` and for the channels,
    rounding each copy its own way, and then `v == r` fails on a red pixel (jax 0.12's CPU build
    did so after a contrast adjustment, putting hues 99 levels off). (Comparing the channels with
    each other instead made XLA's CPU code twice as slow.)
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    sector = jnp.argmax(x, axis=-1)
    red, green = sector == 0, sector == 1
    num = jnp.where(red, g - b, jnp.where(green, b - r, r - g))
    h = num / jnp.where(d > 0, d, 1.0) + jnp.where(red, 0.0, jnp.where(green, 2.0, 4.0))
    return jnp.where(d > 0, _wrap_unit(h / 6.0), 0.0)


def _wrap_unit(t):
    """t mod 1 for t in [-1, 2), with jnp.mod's values: one select instead of a float remainder
    (which dominated the colour program's time on CPU and GPU alike)."""
    return jnp.where(t < 0.0, t + 1.0, jnp.where(t >= 1.0, t - 1.0, t))


def _adjust_contrast(x, factor):
    """tf.image.adjust_contrast of every frame of (T, H, W, 3): about each frame's channel means."""
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
    return (x - mean) * factor + mean


def _adjust_saturation(x, factor):
    """tf.image.adjust_saturation without the trip through HSV: hue and value stay, and each
    channel is v - v * s * g(h) (hsv_to_rgb), so scaling s to s' moves it to v - (v - c) * s' / s."""
    v, _, s = _value_and_saturation(x, keepdims=True)
    ratio = jnp.where(s > 0, jnp.clip(s * factor, 0.0, 1.0) / jnp.where(s > 0, s, 1.0), 0.0)
    return v - (v - x) * ratio


def _adjust_hue(x, delta):
    """tf.image.adjust_hue, delta in [-0.5, 0.5]: the hue shifted, then tf.image.hsv_to_rgb (channel
    n = 5, 3, 1 for r, g, b is v - v * s * clip(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6)."""
    v, d, s = _value_and_saturation(x, keepdims=False)
    k = jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * _wrap_unit(_hue(x, d) + delta)[..., None]  # in [1, 11] ...
    k = jnp.where(k >= 6.0, k - 6.0, k)  # ... where k - 6 is exact, as fmod is
    return v[..., None] - (v * s)[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _color_jitter(x, factors, order):
    """The four adjustments in `order` (op i = order[i]); each result clipped to [0, 1] as on the CPU."""
    ops = (
        lambda v: v * factors[0],
        lambda v: _adjust_contrast(v, factors[1]),
        lambda v: _adjust_saturation(v, factors[2]),
        lambda v: _adjust_hue(v, factors[3]),
    )
    for i in range(4):
        # Each position's input materialised once: on a GPU XLA otherwise fused the earlier
        # positions' whole chain into the contrast's mean and recomputed it there (half the
        # colour program's time on an H200).
        x = jax.lax.optimization_barrier(x)
        x = jnp.clip(jax.lax.switch(order[i], ops, x), 0.0, 1.0)
    return x


def blur_matrix(n: int, sigma, kernel_size: int):
    """(n, n) M with M @ v = v blurred by a normalised Gaussian of `kernel_size` taps, borders
    reflected (augment._blur_matrix's definition)."""
    radius = kernel_size // 2
    taps = jnp.arange(-radius, radius + 1)
    k = jnp.exp(-0.5 * jnp.square(taps.astype(jnp.float32) / sigma))
    k = k / jnp.sum(k)
    src = jnp.abs(jnp.arange(n)[:, None] + taps[None, :])  # reflect at 0 ...
    src = jnp.where(src > n - 1, 2 * (n - 1) - src, src)  # ... and at n - 1
    return jnp.einsum(
        "ik,ikj->ij",
        jnp.broadcast_to(k, src.shape),
        jax.nn.one_hot(src, n),
        precision=jax.lax.Precision.HIGHEST,
    )


def _gaussian_blur(x, sigma, kernel_size: int):
    """(T, H, W, 3) blurred separably, as augment.gaussian_blur. Full float32 products: GPUs would
    otherwise use TF32 for them, a few tenths of a level away from tf.data's blur."""
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("thwc,vw->thvc", x, blur_matrix(x.shape[2], sigma, kernel_size), precision=hi)
    return jnp.einsum("thwc,vh->tvwc", x, blur_matrix(x.shape[1], sigma, kernel_size), precision=hi)


def _to_uint8(x):
    """[0, 1] float -> uint8 as tf.image.convert_image_dtype(saturate=True): x * 255.5, truncated."""
    return jnp.clip(x * 255.5, 0.0, 255.0).astype(jnp.uint8)


def _color_ops(x, params, blur_kernel_size: int):
    """(T, H, W, 3) float in [0, 1] with params (COLOR_PARAMS,) -> the same, colour-augmented."""
    order = params[ORDER].astype(jnp.int32)
    x = jnp.where(params[JITTER] > 0, _color_jitter(x, params[FACTORS], order), x)
    gray = jnp.tensordot(x, jnp.asarray(_GRAY_WEIGHTS), axes=([-1], [0]))[..., None]
    x = jnp.where(params[GRAY] > 0, jnp.broadcast_to(gray, x.shape), x)
    if blur_kernel_size > 1:
        x = jnp.where(params[BLUR] > 0, _gaussian_blur(x, params[SIGMA], blur_kernel_size), x)
    return jnp.clip(x, 0.0, 1.0)


def color_augment_clip(clip, params, blur_kernel_size: int):
    """One clip: (T, H, W, 3) uint8, params (COLOR_PARAMS,) float32 -> (T, H, W, 3) uint8.

    blur_kernel_size: taps of the Gaussian; 1 (or a blur probability of 0 at the draw) never blurs.
    """
    return _to_uint8(_color_ops(clip.astype(jnp.float32) / 255.0, params, blur_kernel_size))


def _bilinear_taps(start, length, size: int):
    """tf.image.resize's bilinear source taps (half-pixel centres) for `size` outputs from the
    `length` inputs starting at `start`: lower, upper (size,) int32 indices and lerp (size,) float32."""
    scale = length.astype(jnp.float32) / size
    src = (jnp.arange(size, dtype=jnp.float32) + 0.5) * scale - 0.5
    floor = jnp.floor(src)
    lower = jnp.maximum(floor.astype(jnp.int32), 0)
    upper = jnp.minimum(jnp.ceil(src).astype(jnp.int32), length - 1)
    return start + lower, start + upper, src - floor


def resize_window(frames, window, size: int):
    """frames (T, H, W, C) uint8, window (WINDOW_PARAMS,) int32 -> (T, size, size, C) float32 in
    [0, 255]: the window [y, x, h, w] resized as tf.image.resize(method='bilinear') resizes it
    (TensorFlow's lerps in its order: along x on the two rows, then along y)."""
    top, bottom, y_lerp = _bilinear_taps(window[WIN_Y], window[WIN_H], size)
    left, right, x_lerp = _bilinear_taps(window[WIN_X], window[WIN_W], size)
    x = frames.astype(jnp.float32)

    def along_x(rows):
        a, b = jnp.take(rows, left, axis=2), jnp.take(rows, right, axis=2)
        return a + (b - a) * x_lerp[:, None]

    upper, lower = along_x(jnp.take(x, top, axis=1)), along_x(jnp.take(x, bottom, axis=1))
    return upper + (lower - upper) * y_lerp[:, None, None]


def window_clip(frames, window, size: int):
    """The geometry of one clip, as augment.augment_clip does it on the host: frames (T, H, W, 3)
    uint8 -> (T, size, size, 3) float32 in [0, 1], resized, flipped (a flow's dx negated)."""
    x = jnp.clip(resize_window(frames, window, size) / 255.0, 0.0, 1.0)
    mirrored = x[:, :, ::-1]
    mirrored = jnp.where(window[WIN_FLOW] > 0, mirrored.at[..., 0].set(1.0 - mirrored[..., 0]), mirrored)
    return jnp.where(window[WIN_FLIP] > 0, mirrored, x)


def _over_clips(fn, *arrays):
    """fn mapped over the clips of arrays with the same leading axes (clips (..., T, H, W, 3),
    vectors (..., P)); the leading axes restored on the output clips."""
    lead = arrays[0].shape[:-4]
    flat = [a.reshape((-1, *a.shape[len(lead) :])) for a in arrays]
    out = jax.vmap(fn)(*flat)
    return out.reshape((*lead, *out.shape[1:]))


def color_augment(clips, params, blur_kernel_size: int):
    """clips (..., T, H, W, 3) uint8, params (..., COLOR_PARAMS) with the same leading axes -> uint8."""
    return _over_clips(lambda c, p: color_augment_clip(c, p, blur_kernel_size), clips, params)


def finish_clips(frames, windows, colors, size: int, blur_kernel_size: int):
    """frames (..., T, H, W, 3) uint8 shipped by on_device 'resize', windows (..., WINDOW_PARAMS),
    colors (..., COLOR_PARAMS) or None -> (..., T, size, size, 3) uint8, the model's input."""
    if colors is None:
        return _over_clips(lambda f, w: _to_uint8(window_clip(f, w, size)), frames, windows)
    return _over_clips(
        lambda f, w, c: _to_uint8(_color_ops(window_clip(f, w, size), c, blur_kernel_size)),
        frames,
        windows,
        colors,
    )


def color_key(clip: str) -> str:
    """The batch key of a clip's colour parameters: `<clip>_color`."""
    return clip + _COLOR_SUFFIX


def window_key(clip: str) -> str:
    """The batch key of a clip's crop window (on_device 'resize'): `<clip>_window`."""
    return clip + _WINDOW_SUFFIX


def is_parameter_key(key: str) -> bool:
    """Whether a batch key holds a clip's augmentation parameters rather than data."""
    return key.endswith((_COLOR_SUFFIX, _WINDOW_SUFFIX))


def apply_to_batch(batch: dict, blur_kernel_size: int, crop_size: int) -> dict:
    """The model's batch: every `<clip>` with a `<clip>_window` resized, flipped and coloured (with
    a `<clip>_color`) to crop_size, every other `<clip>` with a `<clip>_color` colour-augmented;
    the parameter entries dropped."""
    out = {k: v for k, v in batch.items() if not is_parameter_key(k)}
    for key in batch:
        if key.endswith(_WINDOW_SUFFIX):
            clip = key.removesuffix(_WINDOW_SUFFIX)
            if clip in batch:
                frames = batch[clip]
            else:
                owner, index = SHARED_FRAMES[clip]
                frames = batch[owner][:, index]
            colors = batch.get(color_key(clip))
            out[clip] = finish_clips(frames, batch[key], colors, crop_size, blur_kernel_size)
        elif key.endswith(_COLOR_SUFFIX) and window_key(key.removesuffix(_COLOR_SUFFIX)) not in batch:
            clip = key.removesuffix(_COLOR_SUFFIX)
            out[clip] = color_augment(batch[clip], batch[key], blur_kernel_size)
    return out


def make_batch_augmenter(mesh: Mesh, blur_kernel_size: int, crop_size: int) -> Callable[[dict], dict]:
    """A jitted `apply_to_batch` over the sharded batch (each device augments its own clips).

    Batches with nothing left to do (on_device 'none'; 'color' on flow without `flow_color`) are
    returned unchanged. The returned function's `program` is the jitted `apply_to_batch`.
    """
    sharding = batch_sharding(mesh)
    fn = jax.jit(
        lambda b: apply_to_batch(b, blur_kernel_size, crop_size),
        in_shardings=(sharding,),
        out_shardings=sharding,
    )
    warned = []

    def augment(batch: dict) -> dict:
        if not any(is_parameter_key(k) for k in batch):
            return batch
        if not warned and mesh.devices.flat[0].platform == "cpu":
            warned.append(True)
            # XLA's CPU code for these operations is several times slower than tf.data's kernels
            # (bench/input_pipeline.py), and both would share the same cores.
            logging.warning(
                "data.aug.on_device augments on CPU devices, several times slower than in tf.data; "
                "on a machine without accelerators set --config.data.aug.on_device=none"
            )
        return fn(batch)

    augment.program = fn  # the jitted program itself, to lower or profile it
    return augment
