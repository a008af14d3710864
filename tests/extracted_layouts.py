"""Frames and flow extracted from videos as CoCLR/MemDPC, CoCLR's LMDB converter and mmaction2's
denseflow lay them out, written here from their documented formats with OpenCV's TV-L1 (as those
tools compute it), for the tests of `python -m data_prep.build --rgb_from/--flow_from`.

Tests compare the built datasets with these files as decoded from disk (what the tools stored)
and with the float TV-L1 flow they were quantised from.
"""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import lmdb
import msgpack
import numpy as np

from cvtcl_jax.flow.params import OPENCV_DEFAULTS
from data_prep.video import read_frames


def tvl1(frames: list[np.ndarray]) -> list[np.ndarray]:
    """OpenCV's default Dual TV-L1 between consecutive grayscale frames: (H, W, 2) float flows."""
    algo = cv2.optflow.DualTVL1OpticalFlow_create(*OPENCV_DEFAULTS.opencv_args())
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    return [algo.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:], strict=True)]


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """cvRound(255 (f + b) / 2b) clipped to 0..255, as CoCLR (b = 20) and denseflow write it."""
    return np.clip(np.rint(255.0 * (flow + bound) / (2 * bound)), 0, 255).astype(np.uint8)


def videos_of(raw_ucf: Path) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """{"Class/stem": (BGR frames, float TV-L1 flows)} of every video under RAW/UCF-101/."""
    out = {}
    for path in sorted((raw_ucf / "UCF-101").glob("*/*.avi")):
        frames, _ = read_frames(str(path))
        out[f"{path.parent.name}/{path.stem}"] = (frames, tvl1(frames))
    return out


def write_coclr(videos, frame_root: Path, flow_root: Path) -> None:
    """CoCLR's extract_ff layout: image_%05d.jpg (quality 100) and flow_%05d.jpg written by OpenCV
    from the array (dx, dy, 128), one-based."""
    for name, (frames, flows) in videos.items():
        (frame_root / name).mkdir(parents=True)
        (flow_root / name).mkdir(parents=True)
        for i, frame in enumerate(frames):
            cv2.imwrite(
                str(frame_root / name / f"image_{i + 1:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 100]
            )
        for i, flow in enumerate(flows):
            u8 = quantize(flow, 20.0)
            image = np.concatenate([u8, np.full((*u8.shape[:2], 1), 128, np.uint8)], axis=-1)
            cv2.imwrite(str(flow_root / name / f"flow_{i + 1:05d}.jpg"), image)


def write_lmdb(folder: Path, db_path: Path, legacy_msgpack: bool, truncate: str | None = None) -> None:
    """CoCLR's convert_video_to_lmdb of one folder (a single-file LMDB with <db>-order beside it):
    shuffled video order, each value the msgpack list of the video's sorted JPEG files' bytes.
    legacy_msgpack: msgpack < 1.0's raw strings (names and JPEGs as one string type); truncate: the
    "Class/video" whose value is cut short."""
    names = sorted(f"{p.parent.name}/{p.name}" for p in folder.glob("*/*") if p.is_dir())
    random.Random(0).shuffle(names)
    db_path.with_name(db_path.name + "-order").write_text("\n".join(names))
    env = lmdb.open(str(db_path), subdir=False, map_size=1 << 28)

    def pack(value):
        return msgpack.packb(value, use_bin_type=not legacy_msgpack)

    with env.begin(write=True) as txn:
        keys = []
        for i, name in enumerate(names):
            files = sorted((folder / name).glob("*.jpg"))
            value = pack([f.read_bytes() for f in files])
            if name == truncate:
                value = value[: len(value) // 2]
            txn.put(f"{i:09d}".encode("ascii"), value)
            keys.append(f"{i:09d}".encode("ascii"))
        order = [n.encode() for n in names] if legacy_msgpack else names
        txn.put(b"__keys__", pack(keys))
        txn.put(b"__len__", pack(len(keys)))
        txn.put(b"__order__", pack(order))
        txn.put(b"__vlen__", pack([len(list((folder / n).glob("*.jpg"))) for n in names]))
    env.close()


def write_mmaction(videos, root: Path, bound: float) -> None:
    """mmaction2 rawframes from denseflow: img_%05d.jpg and grayscale flow_x/flow_y_%05d.jpg in one
    folder per video, quantised with the bound b."""
    for name, (frames, flows) in videos.items():
        (root / name).mkdir(parents=True)
        for i, frame in enumerate(frames):
            cv2.imwrite(str(root / name / f"img_{i + 1:05d}.jpg"), frame)
        for i, flow in enumerate(flows):
            u8 = quantize(flow, bound)
            cv2.imwrite(str(root / name / f"flow_x_{i + 1:05d}.jpg"), u8[..., 0])
            cv2.imwrite(str(root / name / f"flow_y_{i + 1:05d}.jpg"), u8[..., 1])
