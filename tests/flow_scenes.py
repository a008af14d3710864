"""Frame pairs that look like real video, with their true motion, for testing optical flow.

Each scene is a stack of textured layers (a background, then objects front to back) moved by
translations between the two frames, composited, blurred like a lens and given sensor noise. The
true flow of a pixel of the first frame is the motion of the layer it shows there.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layer:
    """A textured region: its top-left corner in frame 0, its size and its motion in pixels."""

    corner: tuple[float, float]  # (x, y)
    size: tuple[int, int]  # (height, width)
    motion: tuple[float, float]  # (dx, dy) between the frames
    ellipse: bool = False


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) float32 in [0, 255]: noise blurred at three scales, like a natural surface."""
    out = np.zeros((height, width), np.float32)
    for sigma, weight in ((1.0, 0.3), (3.0, 0.4), (8.0, 0.3)):
        noise = rng.normal(size=(height, width)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        out += weight * noise / (noise.std() + 1e-6)
    return np.clip(128 + 45 * out, 0, 255).astype(np.float32)


def _place(image: np.ndarray, x: float, y: float, height: int, width: int) -> np.ndarray:
    """`image` translated by (x, y) into a (height, width) frame, bilinear, 0 outside."""
    m = np.float32([[1, 0, x], [0, 1, y]])
    return cv2.warpAffine(image, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)


def render(
    rng: np.random.Generator,
    height: int,
    width: int,
    layers: list[Layer],
    shake: tuple[float, float] = (0.0, 0.0),
    noise: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two uint8 (H, W) frames of a scene and the true (H, W, 2) flow from the first to the second.

    The background moves by `shake` (camera shake); each layer by its motion plus the shake.
    """
    margin = 32
    background = texture(rng, height + 2 * margin, width + 2 * margin)
    looks = [texture(rng, *layer.size) for layer in layers]
    shapes = []
    for layer in layers:
        shape = np.ones(layer.size, np.float32)
        if layer.ellipse:
            shape = np.zeros(layer.size, np.float32)
            h, w = layer.size
            cv2.ellipse(shape, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1.0, -1)
        shapes.append(shape)
    frames, flow = [], np.zeros((height, width, 2), np.float32)
    for t in (0, 1):
        sx, sy = t * shake[0], t * shake[1]
        frame = _place(background, sx - margin, sy - margin, height, width)
        if t == 0:
            flow[...] = shake
        for layer, look, shape in zip(layers, looks, shapes, strict=True):
            x = layer.corner[0] + t * (layer.motion[0] + shake[0])
            y = layer.corner[1] + t * (layer.motion[1] + shake[1])
            alpha = _place(shape, x, y, height, width)
            frame = frame * (1 - alpha) + _place(look, x, y, height, width) * alpha
            if t == 0:
                flow[alpha > 0.5] = (layer.motion[0] + shake[0], layer.motion[1] + shake[1])
        frame = cv2.GaussianBlur(frame, (0, 0), 0.7)
        frame = frame + rng.normal(scale=noise, size=frame.shape)
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return frames[0], frames[1], flow


def scenes(height: int, width: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Named pairs: independent motions with occlusion and shake, a static shot, a fast object.

    Object sizes and positions scale with the frame, so every size gets the same scenes.
    """
    rng = np.random.default_rng(seed)

    def box(fx, fy, fh, fw):
        return (fx * width, fy * height), (max(8, int(fh * height)), max(8, int(fw * width)))

    c1, s1 = box(0.15, 0.2, 0.35, 0.3)
    c2, s2 = box(0.35, 0.35, 0.4, 0.25)
    c3, s3 = box(0.6, 0.15, 0.3, 0.2)
    c4, s4 = box(0.1, 0.5, 0.35, 0.3)
    return {
        "occlusion_and_shake": render(
            rng,
            height,
            width,
            [Layer(c1, s1, (2.5, 1.0)), Layer(c2, s2, (-1.5, 2.0), ellipse=True), Layer(c3, s3, (0.5, -3.0))],
            shake=(0.6, -0.4),
        ),
        "static_shot": render(rng, height, width, [Layer(c1, s1, (0.0, 0.0))]),
        "fast_object": render(rng, height, width, [Layer(c4, s4, (24.0, 3.0))], shake=(-0.3, 0.2)),
    }


def opencv_flow(frame0: np.ndarray, frame1: np.ndarray, params=None) -> np.ndarray:
    """OpenCV's CPU Dual TV-L1 flow (H, W, 2) float32, with `params`' values or OpenCV's defaults."""
    if params is None:
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    else:
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(*params.opencv_args())
    return tvl1.calc(frame0, frame1, None)
