"""The colour half of the clip augmentations (SPEC 5) on the accelerator, in JAX (no TensorFlow).

With `data.aug.on_device` the tf.data pipeline only decodes the crop window, resizes and flips
(3x the samples per CPU core at the paper's size; bench/input_pipeline.py), and ships each clip
as uint8 with its drawn colour parameters packed in a (COLOR_PARAMS,) float32 vector under
`<clip>_color`. `make_batch_augmenter` applies them on the devices to the sharded batch before the
step: colour jitter (brightness, contrast, saturation, hue in the drawn order), grayscale and
Gaussian blur, the same operations as `augment.color_augment` (TensorFlow's definitions of each),
ending in the same uint8 rounding, so the step sees the same kind of batch either way. The
operations agree with TensorFlow's to one level on the same uint8 input; the whole path differs
from tf.data's by a few levels at most, because the clip is rounded to uint8 once more, before
the colour operations (tests/test_data_pipeline.py).
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
SUFFIX = "_color"

# tf.image.rgb_to_grayscale's weights.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def rgb_to_hsv(x):
    """(..., 3) RGB in [0, 1] -> (..., 3) HSV in [0, 1], as tf.image.rgb_to_hsv.

    The hue's sector is the first channel holding the maximum (r, then g, then b on ties, as
    TensorFlow's `v == r`, `v == g` tests), taken by argmax rather than by comparing `v` with the
    channels: XLA may compute x's elementwise producer separately for `max` and for the channels,
    rounding each copy its own way, and then `v == r` fails on a red pixel (jax 0.12's CPU build
    did so after a contrast adjustment, putting hues 99 levels off).
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, axis=-1)
    d = v - jnp.min(x, axis=-1)
    s = jnp.where(v > 0, d / jnp.where(v > 0, v, 1.0), 0.0)
    safe = jnp.where(d > 0, d, 1.0)
    sector = jnp.argmax(x, axis=-1)
    h = jnp.where(
        sector == 0, (g - b) / safe, jnp.where(sector == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = jnp.where(d > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(x):
    """(..., 3) HSV in [0, 1] -> (..., 3) RGB, as tf.image.hsv_to_rgb: channel n (5, 3, 1 for
    r, g, b) is v - v * s * clip(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6."""
    h, s, v = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _adjust_contrast(x, factor):
    """tf.image.adjust_contrast of every frame of (T, H, W, 3): about each frame's channel means."""
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
    return (x - mean) * factor + mean


def _adjust_saturation(x, factor):
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * factor, 0.0, 1.0)))


def _adjust_hue(x, delta):
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0)))


def _color_jitter(x, factors, order):
    """The four adjustments in `order` (op i = order[i]); each result clipped to [0, 1] as on the CPU."""
    ops = (
        lambda v: v * factors[0],
        lambda v: _adjust_contrast(v, factors[1]),
        lambda v: _adjust_saturation(v, factors[2]),
        lambda v: _adjust_hue(v, factors[3]),
    )
    for i in range(4):
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


def color_augment_clip(clip, params, blur_kernel_size: int):
    """One clip: (T, H, W, 3) uint8, params (COLOR_PARAMS,) float32 -> (T, H, W, 3) uint8.

    blur_kernel_size: taps of the Gaussian; 1 (or a blur probability of 0 at the draw) never blurs.
    """
    x = clip.astype(jnp.float32) / 255.0
    order = params[ORDER].astype(jnp.int32)
    x = jnp.where(params[JITTER] > 0, _color_jitter(x, params[FACTORS], order), x)
    gray = jnp.tensordot(x, jnp.asarray(_GRAY_WEIGHTS), axes=([-1], [0]))[..., None]
    x = jnp.where(params[GRAY] > 0, jnp.broadcast_to(gray, x.shape), x)
    if blur_kernel_size > 1:
        x = jnp.where(params[BLUR] > 0, _gaussian_blur(x, params[SIGMA], blur_kernel_size), x)
    return _to_uint8(jnp.clip(x, 0.0, 1.0))


def color_augment(clips, params, blur_kernel_size: int):
    """clips (..., T, H, W, 3) uint8, params (..., COLOR_PARAMS) with the same leading axes -> uint8."""
    lead = clips.shape[:-4]
    flat = clips.reshape((-1, *clips.shape[-4:]))
    out = jax.vmap(lambda c, p: color_augment_clip(c, p, blur_kernel_size))(
        flat, params.reshape((-1, COLOR_PARAMS))
    )
    return out.reshape((*lead, *clips.shape[-4:]))


def apply_to_batch(batch: dict, blur_kernel_size: int) -> dict:
    """Every `<clip>` with a `<clip>_color` entry colour-augmented; the parameter entries dropped."""
    out = {k: v for k, v in batch.items() if not k.endswith(SUFFIX)}
    for key in batch:
        if key.endswith(SUFFIX):
            clip = key[: -len(SUFFIX)]
            out[clip] = color_augment(batch[clip], batch[key], blur_kernel_size)
    return out


def make_batch_augmenter(mesh: Mesh, blur_kernel_size: int) -> Callable[[dict], dict]:
    """A jitted `apply_to_batch` over the sharded batch (each device augments its own clips).

    Batches without colour parameters (flow without `flow_color`) are returned unchanged.
    """
    sharding = batch_sharding(mesh)
    fn = jax.jit(
        lambda b: apply_to_batch(b, blur_kernel_size), in_shardings=(sharding,), out_shardings=sharding
    )
    warned = []

    def augment(batch: dict) -> dict:
        if not any(k.endswith(SUFFIX) for k in batch):
            return batch
        if not warned and mesh.devices.flat[0].platform == "cpu":
            warned.append(True)
            # XLA's CPU code for these operations is several times slower than tf.data's kernels
            # (bench/input_pipeline.py), and both would share the same cores.
            logging.warning(
                "data.aug.on_device colour-augments on CPU devices, several times slower than in "
                "tf.data; on a machine without accelerators set --config.data.aug.on_device=False"
            )
        return fn(batch)

    return augment
