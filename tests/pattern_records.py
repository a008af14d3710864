"""Tiny prepared datasets whose pixels say where they came from, for input pipeline tests.

Frame i of a video (RGB and flow alike) has channel 0 = 16 + 7 * x-column index (a horizontal
ramp, so a flip is visible), channel 1 = 20 + 4 * i (the frame index, i < 59), channel 2 = 30 + 10 *
video number. JPEG quality 100 keeps each within a few levels, so tests read indices back from
decoded clips. The records and metadata.json have data_prep's exact format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvtcl_jax.data.records import VideoRecord
from data_prep.build import _write_tfrecord
from data_prep.video import encode_jpeg

HEIGHT, WIDTH = 24, 32


def frame_image(video: int, index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 RGB pattern of frame `index` of video `video`."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (16 + 7 * np.arange(width))[None, :]
    img[..., 1] = 20 + 4 * index
    img[..., 2] = 30 + 10 * video
    return img


def frame_number(clip: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) decoded frames -> (...) frame indices read from channel 1."""
    return np.rint((clip[..., 1].astype(np.float64).mean(axis=(-2, -1)) - 20) / 4).astype(int)


def write_pattern_dataset(
    root: Path,
    num_frames: list[int],
    videos_per_shard: int = 2,
    test_every: int = 3,
    views=("rgb", "flow"),
    num_classes: int = 3,
    sizes: dict[int, tuple[int, int]] | None = None,
):
    """Videos 0..N-1 with the given lengths; every `test_every`-th video goes to split1/test.

    Labels are video % num_classes and source ids video // 2 (pairs of clips share a source).
    sizes: {video: (height, width)} for videos of another frame size than (HEIGHT, WIDTH).
    """
    root.mkdir(parents=True, exist_ok=True)
    subsets = {"train": [], "test": []}
    largest = {"train": [0, 0], "test": [0, 0]}
    for v, n in enumerate(num_frames):
        height, width = (sizes or {}).get(v, (HEIGHT, WIDTH))
        frames = [encode_jpeg(frame_image(v, i, height, width)[..., ::-1], 100) for i in range(n)]
        record = VideoRecord(
            video_id=f"video{v:03d}",
            class_name=f"class{v % num_classes}",
            label=v % num_classes,
            source=f"source{v // 2}",
            source_id=v // 2,
            video_index=v,
            fps=25.0,
            height=height,
            width=width,
            frames=frames,
            flows=frames[:-1] if "flow" in views else [],
        )
        subset = "test" if v % test_every == test_every - 1 else "train"
        subsets[subset].append(record.to_proto_bytes())
        largest[subset] = [max(largest[subset][0], height), max(largest[subset][1], width)]
    split = {}
    (root / "split1").mkdir(exist_ok=True)
    for subset, records in subsets.items():
        chunks = [records[i : i + videos_per_shard] for i in range(0, len(records), videos_per_shard)]
        names = [f"split1/{subset}-{s:05d}-of-{len(chunks):05d}.tfrecord" for s in range(len(chunks))]
        for name, chunk in zip(names, chunks, strict=True):
            _write_tfrecord(root / name, chunk)
        split[subset] = {
            "num_videos": len(records),
            "shards": names,
            "shard_sizes": [len(c) for c in chunks],
            "max_frame_size": largest[subset],
        }
    meta = {
        "dataset": "pattern",
        "classes": [f"class{c}" for c in range(num_classes)],
        "num_classes": num_classes,
        "splits": {"split1": split},
        "views": list(views),
    }
    (root / "metadata.json").write_text(json.dumps(meta))
    return meta
