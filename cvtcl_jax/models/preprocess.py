"""Input normalisation, done on the device so the input pipeline can ship uint8 frames.

The pipeline hands over augmented frames as uint8 (4x less host memory and host-to-device
traffic than float32); the model normalises them with the ImageNet statistics (docs/method.md §5), for RGB
and for the 3-channel flow images alike. A network trained on the channels in the other order
(CoCLR's flow networks saw our stored (dx, dy, 128) as (128, dy, dx)) reverses them first, so the
statistics meet the channels they were trained with.
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
