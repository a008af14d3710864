"""Per-worker speed of data preparation at UCF101's size (320x240), with a projection for UCF101.

    python bench/data_prep.py [--frames 60] [--cores 16]

One process, one OpenCV thread (as each build worker runs): decoding frames of an MJPG AVI,
TV-L1 flow at native size, and resizing + JPEG encoding of RGB and flow. UCF101 has 13,320 videos
of 186 frames on average (about 2.48 M frames); the projection divides by the core count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import video  # noqa: E402
from generated import synthetic  # noqa: E402

UCF101_FRAMES = 13_320 * 186


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--cores", type=int, default=16, help="core count for the projection")
    args = p.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    appearance = (synthetic.texture(rng, 240, 320, 120), synthetic.texture(rng, 240, 320, 90))
    frames = synthetic.render_clip(rng, synthetic.MOTIONS["MoveRight"], appearance, args.frames, 240, 320)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.avi"
        synthetic.write_avi(path, frames)
        t = time.perf_counter()
        decoded, _ = video.read_frames(str(path))
        decode_s = time.perf_counter() - t
    t = time.perf_counter()
    flows = video.tvl1_flows(video.grayscale(decoded))
    flow_s = time.perf_counter() - t
    size = video.short_side_size(240, 320, 128)
    t = time.perf_counter()
    for f in decoded:
        video.encode_jpeg(video.resize(f, size), 90)
    for f in flows:
        video.encode_flow_jpeg(video.resize(f, size), 90)
    encode_s = time.perf_counter() - t
    n = len(decoded)
    per_frame = (decode_s + flow_s + encode_s) / n
    hours = UCF101_FRAMES * per_frame / args.cores / 3600
    print(
        json.dumps(
            {
                "size": "320x240",
                "frames": n,
                "decode_fps_per_worker": round(n / decode_s, 1),
                "tvl1_fps_per_worker": round(len(flows) / flow_s, 2),
                "resize_encode_fps_per_worker": round(n / encode_s, 1),
                "total_fps_per_worker": round(1 / per_frame, 2),
                f"ucf101_hours_on_{args.cores}_cores": round(hours, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
