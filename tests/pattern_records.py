"""Tiny prepared datasets whose pixels say where they came from, for input pipeline tests.

Frame i of a video (RGB and flow alike) has channel 0 = 16 + 7 * x-column index (a horizontal
ramp, so a flip is visible), channel 1 = 20 + 4 * i (the frame index, i < 59), channel 2 = 30 + 10 *
video number. JPEG quality 100 keeps each within a few levels, so tests read indices back from
decoded clips. The datasets are TFDS datasets with data_prep's features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvtcl_jax.data import records
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


PATTERN_NAME = "pattern_videos/split1"  # the TFDS name (builder/config) of every pattern dataset


def write_pattern_dataset(
    root: Path,
    num_frames: list[int],
    videos_per_shard: int = 2,
    test_every: int = 3,
    views=("rgb", "flow"),
    num_classes: int = 3,
    sizes: dict[int, tuple[int, int]] | None = None,
    metadata: bool = True,
    short_side: int | None = None,
) -> Path:
    """The TFDS dataset PATTERN_NAME in the data_dir `root`: videos 0..N-1 with the given lengths;
    every `test_every`-th video goes to the test split. Returns the dataset's directory.

    Labels are video % num_classes and source ids video // 2 (pairs of clips share a source).
    sizes: {video: (height, width)} for videos of another frame size than (HEIGHT, WIDTH).
    Records are written in video order with the features of cvtcl_jax/data/records.py and TFDS's
    own metadata writer; `metadata=False` leaves out the builders' metadata (max_frame_size);
    short_side: records it as the frames' stored short side, as data_prep's builders do.
    """
    classes = [f"class{c}" for c in range(num_classes)]
    subsets = {"train": [], "test": []}
    largest = {"train": [0, 0], "test": [0, 0]}
    for v, n in enumerate(num_frames):
        height, width = (sizes or {}).get(v, (HEIGHT, WIDTH))
        frames = [encode_jpeg(frame_image(v, i, height, width)[..., ::-1], 100) for i in range(n)]
        example = {
            "video_id": f"video{v:03d}",
            "label": v % num_classes,
            "source": f"source{v // 2}",
            "source_id": v // 2,
            "video_index": v,
            "num_frames": n,
            "num_flow": n - 1 if "flow" in views else 0,
            "fps": 25.0,
            "height": height,
            "width": width,
            "rgb": frames,
        }
        if "flow" in views:
            example["flow"] = frames[:-1]
        subset = "test" if v % test_every == test_every - 1 else "train"
        subsets[subset].append(example)
        largest[subset] = [max(largest[subset][0], height), max(largest[subset][1], width)]
    meta = {"dataset": "pattern", "max_frame_size": largest} if metadata else None
    if meta is not None and short_side is not None:
        meta["parameters"] = {"short_side": short_side}
    features = records.video_features(classes, views)
    return records.write_dataset(root, PATTERN_NAME, features, subsets, videos_per_shard, meta)
