"""One video: decoding, resizing, quantised TV-L1 flow, JPEG encoding (docs/method.md §5), and
the whole preparation of one video as a pool or Beam worker runs it."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cvtcl_jax.data.records import FLOW_BOUND
from cvtcl_jax.flow.params import OPENCV_DEFAULTS

if TYPE_CHECKING:
    from data_prep.extracted import FrameSource
    from data_prep.layouts import Video

GIVEN_FLOW = "given"  # the flow backend of a build whose flow is read from --flow_from


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


def encode_frames(frames: list[np.ndarray], short_side: int, jpeg_quality: int):
    """BGR frames -> (rgb JPEGs at the stored size, grayscale frames at native size, stored size)."""
    size = short_side_size(*frames[0].shape[:2], short_side)
    rgb = [encode_jpeg(resize(f, size), jpeg_quality) for f in frames]
    return rgb, grayscale(frames), size


def decode_video(path: str, short_side: int, jpeg_quality: int):
    """Decode a video and encode its RGB frames. -> (rgb JPEGs, grayscale frames, fps, stored size).

    The grayscale frames are at native size, for the flow.
    """
    frames, fps = read_frames(path)
    rgb, gray, size = encode_frames(frames, short_side, jpeg_quality)
    return rgb, gray, fps, size


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
    dataset's per-video cache lives.

    rgb_from / flow_from: frames and flow other tools extracted (data_prep/extracted.py), read
    instead of decoding the video; with flow_from the flow is taken as given (flow_backend
    GIVEN_FLOW), never computed.
    """

    cache_dir: str
    short_side: int
    jpeg_quality: int
    flow_backend: str | None  # "opencv", "jax" or GIVEN_FLOW; None: RGB only
    flow_batch: int  # JAX flow pairs per batch
    flow_bucket: int  # JAX flow buffers: each side rounded up to a multiple
    rgb_from: FrameSource | None = None
    flow_from: FrameSource | None = None

    def input_bytes(self, video: Video) -> int | None:
        """Bytes of the video's input (its file, or its extracted frames and flow; None where
        absent): the cache prepares a video again when they change."""
        if self.rgb_from is None:
            try:
                return os.path.getsize(video.path) if "://" not in video.path else _gfile_size(video.path)
            except OSError:
                return None
        total = 0
        for source in (self.rgb_from, self.flow_from):
            if source is not None:
                entry = source.locate(video.class_name, video.video_id)
                if entry is None:
                    return None
                total += source.input_bytes(entry)
        return total


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


def _located(source: FrameSource, video: Video) -> str:
    entry = source.locate(video.class_name, video.video_id)
    if entry is None:
        raise VideoError(
            f"its {source.view} is not in {source.path} (no {video.class_name}/{video.video_id} there)"
        )
    return entry


def decode_input(video: Video, prep: Preparation):
    """The video's frames, from its file or from prep.rgb_from, encoded for storage.
    -> (rgb JPEGs, grayscale frames at native size, fps (0.0: unknown), stored size)."""
    if prep.rgb_from is None:
        return decode_video(video.path, prep.short_side, prep.jpeg_quality)
    entry = _located(prep.rgb_from, video)
    frames = prep.rgb_from.rgb_frames(entry)
    if len(frames) < 2:
        raise VideoError(f"{len(frames)} frame(s) in {entry}: optical flow needs at least two")
    rgb, gray, size = encode_frames(frames, prep.short_side, prep.jpeg_quality)
    return rgb, gray, 0.0, size


def given_flows(video: Video, prep: Preparation, num_frames: int, size: tuple[int, int]) -> list[bytes]:
    """prep.flow_from's flow of the video, checked (n - 1 flows for n frames) and stored as ours."""
    source = prep.flow_from
    entry = _located(source, video)
    flows = source.flows(entry)
    if len(flows) != num_frames - 1:
        raise VideoError(
            f"{num_frames} frames but {len(flows)} flows in {entry}; the {source.layout} layout stores "
            "n - 1 flows for n frames (an incomplete extraction?)"
        )
    return encode_flows(flows, size, prep.jpeg_quality)


def compute_video(video: Video, prep: Preparation) -> PreparedVideo:
    """Decode, resize, flow and encode one video (raises VideoError for an unusable one). The JAX
    backend batches the pairs of this one video (the local command batches across videos)."""
    if prep.flow_backend == GIVEN_FLOW:
        rgb, _, fps, size = decode_input(video, prep)
        return PreparedVideo(rgb, given_flows(video, prep, len(rgb), size), fps, size)
    rgb, gray, fps, size = decode_input(video, prep)
    if prep.flow_backend is None:
        return PreparedVideo(rgb, [], fps, size)
    if prep.flow_backend == "opencv":
        return PreparedVideo(rgb, encode_flows(tvl1_flows(gray), size, prep.jpeg_quality), fps, size)
    batcher = _flow_batcher(prep.flow_batch, prep.flow_bucket)
    for i in range(len(gray) - 1):
        batcher.add(i, gray[i], gray[i + 1])
    batcher.flush()
    flows = dict(batcher.results(wait=True))
    quantized = [quantize_flow(flows[i]) for i in range(len(gray) - 1)]
    return PreparedVideo(rgb, encode_flows(quantized, size, prep.jpeg_quality), fps, size)


def _gfile_size(path: str) -> int:
    import tensorflow as tf

    try:
        return int(tf.io.gfile.stat(path).length)
    except tf.errors.NotFoundError as e:
        raise OSError(str(e)) from e
