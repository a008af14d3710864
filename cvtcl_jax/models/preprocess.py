"""Input normalisation, done on the device so the input pipeline can ship uint8 frames.

The pipeline hands over augmented frames as uint8 (4x less host memory and host-to-device
traffic than float32); the model normalises them with the ImageNet statistics (docs/method.md §5), for RGB
and for the 3-channel flow images alike. A network trained on the channels in the other order
(CoCLR's flow networks saw our stored (dx, dy, 128) as (128, dy, dx)) reverses them first, so the
statistics meet the channels they were trained with. A flow network may also centre its input's
motion first (`centre_motion`): each frame's median flow, the camera's motion where the background
fills most of the frame, is subtracted, so the network sees the objects' motion relative to it.
"""

from __future__ import annotations

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_frames(x, reverse_channels: bool = False):
    """(..., 3) uint8 in [0, 255] -> float32 (x / 255 - mean) / std; float input is returned as is.

    reverse_channels: the channels are reversed before normalising (x[..., ::-1]). Float input is
    taken to be normalised already, in the network's own channel order (tests, benchmarks,
    torchvision parity checks).
    """
    if x.dtype != jnp.uint8:
        return x
    if reverse_channels:
        x = x[..., ::-1]
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x.astype(jnp.float32) / 255.0 - mean) / std


def centre_motion(x):
    """(..., H, W, C) uint8 flow images (0 px = 128) -> uint8 with each frame's per-channel median
    moved to 128: clip(x - median + 128, 0, 255). The median is the lower one (the value at
    (H * W - 1) // 2 of the frame's sorted values), so it is one of the frame's own levels; the
    constant channel of a flow image (128) is unchanged. Float input is returned as is (taken to be
    prepared already, as `normalize_frames` takes it)."""
    if x.dtype != jnp.uint8:
        return x
    *lead, h, w, c = x.shape
    flat = x.reshape(*lead, h * w, c)
    median = jnp.sort(flat, axis=-2)[..., (h * w - 1) // 2 : (h * w - 1) // 2 + 1, :]
    centred = flat.astype(jnp.int32) - median.astype(jnp.int32) + 128
    return jnp.clip(centred, 0, 255).astype(jnp.uint8).reshape(x.shape)
