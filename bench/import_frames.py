"""Data preparation from frames and flow other tools extracted, against a build from the videos.

    python bench/import_frames.py [--videos 12] [--frames 40] [--workers 2]

Generates `--videos` synthetic UCF101-layout videos at UCF101's 320x240, extracts them as CoCLR /
MemDPC folders, CoCLR's LMDBs and mmaction2 rawframes (tests/extracted_layouts.py, OpenCV's
TV-L1; not timed), then prepares the same set four ways into fresh data_dirs, each a whole
`python -m data_prep.build` command (start-up included) on --workers processes:
  videos      decode the AVIs, OpenCV TV-L1 at native size (the default build)
  coclr       --rgb_from / --flow_from the CoCLR folders: no video decoded, flow as given
  coclr_lmdb  the same from CoCLR's LMDBs
  mmaction    --rgb_from / --flow_from mmaction2's rawframes (grayscale flow_x / flow_y)
Prints one JSON line per way: wall seconds, frames/s and frames/s per worker process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.build_runners import speed_row, timed_build  # noqa: E402
from generated import synthetic  # noqa: E402
from tests import extracted_layouts as tools  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=12, help="4 classes x at least 3 groups")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    groups = max(3, args.videos // 4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = synthetic.generate(
            tmp / "raw",
            num_classes=4,
            groups=groups,
            clips_per_group=1,
            num_frames=args.frames,
            height=240,
            width=320,
        )
        videos = tools.videos_of(raw)
        tools.write_coclr(videos, tmp / "frame", tmp / "flow")
        tools.write_lmdb(tmp / "frame", tmp / "frame.lmdb", legacy_msgpack=True)
        tools.write_lmdb(tmp / "flow", tmp / "flow.lmdb", legacy_msgpack=True)
        tools.write_mmaction(videos, tmp / "rawframes", bound=20.0)
        ways = {
            "videos": [],
            "coclr": [f"--rgb_from={tmp / 'frame'}", f"--flow_from={tmp / 'flow'}"],
            "coclr_lmdb": [f"--rgb_from={tmp / 'frame.lmdb'}", f"--flow_from={tmp / 'flow.lmdb'}"],
            "mmaction": [f"--rgb_from={tmp / 'rawframes'}", f"--flow_from={tmp / 'rawframes'}"],
        }
        frames = 4 * groups * args.frames
        for name, flags in ways.items():
            wall = timed_build(raw, tmp / f"out_{name}", args.workers, flags)
            print(json.dumps(speed_row(name, 4 * groups, frames, "320x240", args.workers, wall)), flush=True)


if __name__ == "__main__":
    main()
