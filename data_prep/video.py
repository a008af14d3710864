"""One video: decoding, resizing, quantised TV-L1 flow, JPEG encoding (docs/method.md §5), and
the whole preparation of one video as a pool or Beam worker runs it."""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from cvtcl_jax.data.records import FLOW_BOUND
from cvtcl_jax.flow.params import OPENCV_DEFAULTS


class VideoError(Exception):
    """A video that cannot be used; the message is the reason reported to the user."""


def read_frames(path: str) -> tuple[list[np.ndarray], float]:
    """All frames of a video file as BGR uint8 (H, W, 3) arrays, and its frame rate."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise VideoError("unreadable: OpenCV could not open the file")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise VideoError("empty or unreadable: no frame could be decoded")
    if len(frames) == 1:
        raise VideoError("only one frame: optical flow needs at least two")
    return frames, fps


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after resizing so that the short side is `short_side`, keeping aspect."""
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width): area averaging when shrinking, bilinear when enlarging."""
    h, w = size
    if (h, w) == image.shape[:2]:
        return image
    shrinking = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def quantize_flow(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) float flow in pixels -> uint8, clipped to +-20 and mapped so that 0 -> 128."""
    clipped = np.clip(flow, -FLOW_BOUND, FLOW_BOUND)
    return np.round((clipped + FLOW_BOUND) * 255.0 / (2 * FLOW_BOUND)).astype(np.uint8)


def dequantize_flow(u8: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_flow` (up to rounding): uint8 -> flow in native pixels."""
    return u8.astype(np.float32) * (2 * FLOW_BOUND / 255.0) - FLOW_BOUND


def grayscale(frames: list[np.ndarray]) -> list[np.ndarray]:
    """BGR frames -> (H, W) uint8 grayscale, as TV-L1 sees them."""
    return [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]


def tvl1_flows(gray: list[np.ndarray]) -> list[np.ndarray]:
    """OpenCV's Dual TV-L1 flow (default parameters) between consecutive grayscale frames.

    Returns n - 1 quantised (H, W, 2) uint8 arrays (dx, dy), at the frames' size.
    """
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(*OPENCV_DEFAULTS.opencv_args())
    return [quantize_flow(tvl1.calc(a, b, None)) for a, b in zip(gray[:-1], gray[1:], strict=True)]


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VideoError("JPEG encoding failed")
    return buf.tobytes()


def encode_flow_jpeg(flow_u8: np.ndarray, quality: int) -> bytes:
    """(H, W, 2) uint8 (dx, dy) -> JPEG whose RGB channels are (dx, dy, 128).

    OpenCV writes BGR, so the channels are given in reverse order.
    """
    h, w = flow_u8.shape[:2]
    bgr = np.stack([np.full((h, w), 128, np.uint8), flow_u8[..., 1], flow_u8[..., 0]], axis=-1)
    return encode_jpeg(bgr, quality)


def decode_video(path: str, short_side: int, jpeg_quality: int):
    """Decode a video and encode its RGB frames. -> (rgb JPEGs, grayscale frames, fps, stored size).

    The grayscale frames are at native size, for the flow.
    """
    frames, fps = read_frames(path)
    size = short_side_size(*frames[0].shape[:2], short_side)
    rgb = [encode_jpeg(resize(f, size), jpeg_quality) for f in frames]
    return rgb, grayscale(frames), fps, size


def encode_flows(flows_u8: list[np.ndarray], size: tuple[int, int], jpeg_quality: int) -> list[bytes]:
    """Quantised native-size flows -> JPEGs at the stored size."""
    return [encode_flow_jpeg(resize(f, size), jpeg_quality) for f in flows_u8]


def process_video(path: str, short_side: int, jpeg_quality: int, with_flow: bool = True):
    """Decode, resize and encode one video, flow by OpenCV. -> (rgb JPEGs, flow JPEGs, fps, size)."""
    rgb, gray, fps, size = decode_video(path, short_side, jpeg_quality)
    flows = encode_flows(tvl1_flows(gray), size, jpeg_quality) if with_flow else []
    return rgb, flows, fps, size


@dataclasses.dataclass(frozen=True)
class Preparation:
    """How to prepare a video (picklable: it travels to pool and Beam workers) and where its
    dataset's per-video cache lives."""

    cache_dir: str
    short_side: int
    jpeg_quality: int
    flow_backend: str | None  # "opencv" or "jax"; None: RGB only
    flow_batch: int  # JAX flow pairs per batch
    flow_bucket: int  # JAX flow buffers: each side rounded up to a multiple


@dataclasses.dataclass
class PreparedVideo:
    """One video's stored content: JPEG frames, flow JPEGs, frame rate and stored size."""

    rgb: list[bytes]
    flows: list[bytes]
    fps: float
    size: tuple[int, int]


def failure_reason(e: Exception) -> str:
    """The reason reported for a video whose preparation raised `e`."""
    if isinstance(e, VideoError):
        return str(e)
    # A decoder crash on a corrupt file must not stop the other videos.
    return f"failed: {type(e).__name__}: {e}"


@functools.cache
def _flow_batcher(batch_size: int, multiple: int):
    """One batcher per process, so its compiled programs are reused across videos."""
    from cvtcl_jax.flow.batching import FlowBatcher

    return FlowBatcher(batch_size=batch_size, multiple=multiple)


def compute_video(path: str, prep: Preparation) -> PreparedVideo:
    """Decode, resize, flow and encode one video (raises VideoError for an unusable one). The JAX
    backend batches the pairs of this one video (the local command batches across videos)."""
    if prep.flow_backend != "jax":
        return PreparedVideo(
            *process_video(path, prep.short_side, prep.jpeg_quality, prep.flow_backend is not None)
        )
    rgb, gray, fps, size = decode_video(path, prep.short_side, prep.jpeg_quality)
    batcher = _flow_batcher(prep.flow_batch, prep.flow_bucket)
    for i in range(len(gray) - 1):
        batcher.add(i, gray[i], gray[i + 1])
    batcher.flush()
    flows = dict(batcher.results(wait=True))
    quantized = [quantize_flow(flows[i]) for i in range(len(gray) - 1)]
    return PreparedVideo(rgb, encode_flows(quantized, size, prep.jpeg_quality), fps, size)
