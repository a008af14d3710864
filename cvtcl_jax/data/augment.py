"""Clip augmentations (docs/method.md §5): parameters drawn once per clip, applied to every frame of it.

`draw_params` is a pure function of a stateless seed, so one draw can be shared by the RGB and
the flow clip of a co-training sample (same crop, same flip). Frames are decoded only inside the
crop window (`tf.io.decode_and_crop_jpeg`), resized, flipped (a flow flip also negates dx), then
colour-augmented (RGB; flow only when `flow_color` is set) and returned as uint8; the model
normalises on the device. `AugmentConfig.on_device` moves the tail of this to the accelerators
(device_augment.py): 'color' the colour operations, 'resize' everything after the decoding.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from cvtcl_jax.data.device_augment import ON_DEVICE

# libjpeg's exact integer IDCT, as OpenCV decodes: TF's default fast IDCT reads smooth stored flow
# frames about one level low in dx, a bias of -0.18 px (about 3% slower to decode, 171x128).
JPEG_DCT = "INTEGER_ACCURATE"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Every probability and range of the pretraining augmentations; defaults are docs/method.md §5's.

    blur_kernel_size: taps of the Gaussian (odd); 13 covers +-3 sigma of the largest sigma 2.0 and
    is about 10% of a 128 crop, as in SimCLR/CoCLR.
    on_device: which operations the accelerators do (device_augment), one of ON_DEVICE:
      'none'    tf.data does everything; clips leave the pipeline as the model's uint8 input.
      'color'   tf.data decodes the crop window, resizes and flips; the devices apply colour jitter,
                grayscale and blur from each clip's `<clip>_color` parameters.
      'resize'  tf.data only decodes the frames (whole, padded to the subset's largest frame) and
                ships them with `<clip>_window`; the devices cut the crop window, resize, flip,
                colour and round to uint8. The LTCL anchor is not shipped: it is cut on the
                devices from the first segment's frames, decoded once.
    """

    area_range: tuple[float, float] = (0.2, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 13
    flip_prob: float = 0.5
    flow_color: bool = False
    on_device: str = "none"

    @property
    def has_color_ops(self) -> bool:
        """Whether colour operations are ever drawn (with all probabilities 0 no clip needs them)."""
        blur = self.blur_prob > 0 and self.blur_kernel_size > 1
        return self.color_jitter_prob > 0 or self.grayscale_prob > 0 or blur

    def __post_init__(self):
        probs = ("color_jitter_prob", "grayscale_prob", "blur_prob", "flip_prob")
        problems = [
            f"{p}={getattr(self, p)} is not in [0, 1]" for p in probs if not 0 <= getattr(self, p) <= 1
        ]
        lo, hi = self.area_range
        if not 0 < lo <= hi <= 1:
            problems.append(f"area_range={self.area_range} must satisfy 0 < min <= max <= 1")
        if not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            problems.append(f"aspect_range={self.aspect_range} must satisfy 0 < min <= max")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            problems.append(f"blur_sigma={self.blur_sigma} must satisfy 0 < min <= max")
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            problems.append(f"blur_kernel_size={self.blur_kernel_size} must be a positive odd number")
        if not 0 <= self.hue <= 0.5:
            problems.append(f"hue={self.hue} must be in [0, 0.5]")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            problems.append("brightness, contrast and saturation must be >= 0")
        if isinstance(self.on_device, bool) or self.on_device not in ON_DEVICE:
            was = " (True was 'color', False 'none')" if isinstance(self.on_device, bool) else ""
            problems.append(f"on_device={self.on_device!r} must be one of {ON_DEVICE}{was}")
        if problems:
            raise ValueError("bad augmentation config: " + "; ".join(problems))


def _bernoulli(seed, p):
    return tf.random.stateless_uniform([], seed) < p


def _uniform(seed, lo, hi):
    return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi)


def draw_params(seed, height, width, cfg: AugmentConfig) -> dict:
    """One clip's augmentation parameters. seed: (2,) int64; height, width: stored frame size.

    Returns scalars / small vectors: crop (4,) int32 [y, x, h, w], flip, jitter, gray, blur (bool),
    factors (4,) float32 [brightness, contrast, saturation, hue], order (4,) int32, sigma float32.
    """
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=12)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=s[0],
        min_object_covered=0.0,
        aspect_ratio_range=cfg.aspect_range,
        area_range=cfg.area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    factors = tf.stack(
        [
            _uniform(s[1], max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
            _uniform(s[2], max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
            _uniform(s[3], max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
            _uniform(s[4], -cfg.hue, cfg.hue),
        ]
    )
    return {
        "crop": tf.cast(tf.stack([begin[0], begin[1], size[0], size[1]]), tf.int32),
        "flip": _bernoulli(s[5], cfg.flip_prob),
        "jitter": _bernoulli(s[6], cfg.color_jitter_prob),
        "factors": factors,
        # torchvision's ColorJitter applies its four adjustments in a random order.
        "order": tf.random.experimental.stateless_shuffle(tf.range(4), seed=s[7]),
        "gray": _bernoulli(s[8], cfg.grayscale_prob),
        "blur": _bernoulli(s[9], cfg.blur_prob),
        "sigma": _uniform(s[10], cfg.blur_sigma[0], cfg.blur_sigma[1]),
    }


def decode_window(jpegs, window):
    """jpegs: (T,) string -> (T, h, w, 3) uint8, decoding only the crop window [y, x, h, w]."""
    return tf.map_fn(
        lambda b: tf.io.decode_and_crop_jpeg(b, window, channels=3, dct_method=JPEG_DCT),
        jpegs,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


def resize(frames, size: int):
    """(T, h, w, 3) uint8 -> (T, size, size, 3) float32 in [0, 1], bilinear.

    No antialiasing: crops are mostly enlarged (short side 128 -> 128 crop), and it doubles the cost.
    """
    x = tf.image.resize(frames, (size, size), method="bilinear") / 255.0
    return tf.clip_by_value(x, 0.0, 1.0)


def flip(x, is_flow: bool):
    """Horizontal flip of (..., W, 3) values in [0, 1]; flow's dx (channel 0) is negated around 128
    (u8 -> 255 - u8), because mirroring the image reverses horizontal motion."""
    x = tf.reverse(x, axis=[-2])
    if is_flow:
        x = tf.concat([1.0 - x[..., :1], x[..., 1:]], axis=-1)
    return x


def _color_jitter(x, factors, order):
    ops = [
        lambda v: v * factors[0],
        lambda v: tf.image.adjust_contrast(v, factors[1]),
        lambda v: tf.image.adjust_saturation(v, factors[2]),
        lambda v: tf.image.adjust_hue(v, factors[3]),
    ]
    for i in range(4):
        x = tf.clip_by_value(tf.switch_case(order[i], [lambda op=op, v=x: op(v) for op in ops]), 0.0, 1.0)
    return x


def _blur_matrix(n: int, sigma, kernel_size: int):
    """(n, n) matrix M with (M @ v) = v blurred by a Gaussian, borders reflected."""
    radius = kernel_size // 2
    taps = tf.range(-radius, radius + 1)
    k = tf.exp(-0.5 * tf.square(tf.cast(taps, tf.float32) / sigma))
    k = k / tf.reduce_sum(k)
    src = tf.abs(tf.range(n)[:, None] + taps[None, :])  # reflect at 0 ...
    src = tf.where(src > n - 1, 2 * (n - 1) - src, src)  # ... and at n - 1
    return tf.einsum("ik,ikj->ij", tf.broadcast_to(k, src.shape), tf.one_hot(src, n))


def gaussian_blur(x, sigma, kernel_size: int):
    """Separable Gaussian blur of (T, H, W, C) with reflected borders (no darkened edges).

    Done as two products with banded (H, H) and (W, W) matrices: on the CPU this is about 3x
    faster than tf.nn.depthwise_conv2d (bench/input_pipeline.py), and blur is the costliest op.
    """
    x = tf.einsum("thwc,vw->thvc", x, _blur_matrix(x.shape[2], sigma, kernel_size))
    return tf.einsum("thwc,vh->tvwc", x, _blur_matrix(x.shape[1], sigma, kernel_size))


def color_augment(x, params: dict, cfg: AugmentConfig):
    """Colour jitter (p), grayscale (p), blur (p) of (T, H, W, 3) float in [0, 1]."""
    x = tf.cond(params["jitter"], lambda: _color_jitter(x, params["factors"], params["order"]), lambda: x)
    x = tf.cond(params["gray"], lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)), lambda: x)
    if cfg.blur_prob > 0 and cfg.blur_kernel_size > 1:
        x = tf.cond(
            params["blur"], lambda: gaussian_blur(x, params["sigma"], cfg.blur_kernel_size), lambda: x
        )
    return tf.clip_by_value(x, 0.0, 1.0)


def colored_on_device(cfg: AugmentConfig, is_flow: bool) -> bool:
    """Whether a clip of this view leaves the pipeline without its colour operations, which the
    devices apply from its `color_vector` (cvtcl_jax/data/device_augment.py)."""
    return cfg.on_device != "none" and cfg.has_color_ops and (not is_flow or cfg.flow_color)


def color_vector(params: dict):
    """A clip's colour parameters packed for the devices: (12,) float32, device_augment's layout
    [jitter, gray, blur, sigma, brightness, contrast, saturation, hue, order 0-3]."""
    flags = tf.cast(tf.stack([params["jitter"], params["gray"], params["blur"]]), tf.float32)
    return tf.concat(
        [flags, [params["sigma"]], params["factors"], tf.cast(params["order"], tf.float32)], axis=0
    )


def window_vector(params: dict, is_flow: bool):
    """A clip's geometry packed for the devices (on_device 'resize'): (6,) int32, device_augment's
    layout [y, x, h, w, flip, flow], the crop window in the coordinates of the whole frame."""
    flags = tf.stack([tf.cast(params["flip"], tf.int32), tf.constant(int(is_flow), tf.int32)])
    return tf.concat([params["crop"], flags], axis=0)


def pad_frames(frames, pad_hw: tuple[int, int]):
    """(T, h, w, 3) uint8 -> (T, *pad_hw, 3): zeros below and to the right (on_device 'resize'
    ships every clip at one static shape; the window vector says which part is the crop)."""
    shape = tf.shape(frames)
    tf.debugging.assert_less_equal(
        shape[1:3],
        tf.constant(pad_hw, tf.int32),
        message="a frame is larger than the subset's largest stored frame (the dataset's metadata)",
    )
    x = tf.cond(
        tf.reduce_all(tf.equal(shape[1:3], pad_hw)),  # the common case, without a copy
        lambda: frames,
        lambda: tf.pad(frames, [[0, 0], [0, pad_hw[0] - shape[1]], [0, pad_hw[1] - shape[2]], [0, 0]]),
    )
    return tf.ensure_shape(x, (frames.shape[0], *pad_hw, 3))


def decode_full(jpegs):
    """jpegs: (T,) string -> (T, H, W, 3) uint8, whole frames."""
    return tf.map_fn(
        lambda b: tf.io.decode_jpeg(b, channels=3, dct_method=JPEG_DCT),
        jpegs,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


def augment_clip(jpegs, params: dict, cfg: AugmentConfig, size: int, is_flow: bool):
    """(T,) JPEG strings -> (T, size, size, 3) uint8 augmented with the drawn `params` (without
    the colour operations where `colored_on_device`). Not for on_device 'resize' (the pipeline
    ships `pad_frames(decode_full(...))` and `window_vector` instead)."""
    x = resize(decode_window(jpegs, params["crop"]), size)
    x = tf.cond(params["flip"], lambda: flip(x, is_flow), lambda: x)
    if (not is_flow or cfg.flow_color) and not colored_on_device(cfg, is_flow):
        x = color_augment(x, params, cfg)
    return to_uint8(x, size)


def to_uint8(x, size: int):
    """(..., size, size, 3) float in [0, 1] -> uint8 with the static frame shape set."""
    x = tf.image.convert_image_dtype(x, tf.uint8, saturate=True)
    return tf.ensure_shape(x, (*x.shape[:-3], size, size, 3))


def eval_windows(height, width, crops: str, ten_crop_scale: float):
    """Square crop windows [y, x, side, side] for evaluation: (1, 4) 'center' or (5, 4) 'ten'
    (centre + four corners; the other five of the ten are their flips).

    'center' takes the largest centred square; 'ten' squares of ten_crop_scale x the short side,
    so that the corners differ from the centre even for frames whose short side is the crop size.
    """
    short = tf.minimum(height, width)
    if crops == "center":
        side = short
        return tf.stack([[(height - side) // 2, (width - side) // 2, side, side]])
    side = tf.cast(tf.math.round(tf.cast(short, tf.float32) * ten_crop_scale), tf.int32)
    ys = [(height - side) // 2, 0, 0, height - side, height - side]
    xs = [(width - side) // 2, 0, width - side, 0, width - side]
    return tf.stack([tf.stack([y, x, side, side]) for y, x in zip(ys, xs, strict=True)])


EVAL_CROPS = {"center": 1, "ten": 10}


def check_eval_crops(crops: str, ten_crop_scale: float) -> None:
    if crops not in EVAL_CROPS:
        raise ValueError(f"eval crops {crops!r} unknown; use one of {sorted(EVAL_CROPS)}")
    if not 0 < ten_crop_scale <= 1 or math.isnan(ten_crop_scale):
        raise ValueError(f"ten_crop_scale={ten_crop_scale} must be in (0, 1]")
