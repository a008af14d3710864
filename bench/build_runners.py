"""Data preparation speed per core by runner: today's process pool against the Beam pipeline.

    python bench/build_runners.py [--videos 16] [--frames 40] [--workers 2]

Generates `--videos` synthetic UCF101-layout videos at 160x120 and prepares them three ways into
fresh data_dirs, each a whole `python -m data_prep.build` command (start-up included), flow by
OpenCV:
  pool            phase 1 on a process pool of --workers, then the builder's Beam pipeline in one
                  process reading the cache (the command's default)
  beam_workers    the Beam pipeline alone on the DirectRunner with --workers worker processes
                  (multi_processing), which prepares every video
  beam_one        the Beam pipeline alone in one process (what `tfds build` does by default)
Prints one JSON line per way: wall seconds, frames/s and frames/s per worker process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generated import synthetic  # noqa: E402


def timed_build(raw: Path, out: Path, workers: int, flags: list[str]) -> float:
    """Wall seconds of one `python -m data_prep.build` of the UCF101-layout raw set (OpenCV flow)."""
    cmd = [
        sys.executable,
        "-m",
        "data_prep.build",
        "--dataset=ucf101",
        f"--raw_dir={raw}",
        f"--out_dir={out}",
    ]
    cmd += [f"--workers={workers}", "--quiet", "--flow_backend=opencv", *flags]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def speed_row(way: str, videos: int, frames: int, size: str, workers: int, wall: float) -> dict:
    """One line of the data preparation benches: wall seconds and frames/s (per worker)."""
    return {
        "way": way,
        "videos": videos,
        "frames": frames,
        "size": size,
        "workers": workers,
        "wall_s": round(wall, 1),
        "frames_per_s": round(frames / wall, 2),
        "frames_per_s_per_worker": round(frames / wall / workers, 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=16, help="a multiple of 8 (4 classes x groups of 2)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    groups = max(1, args.videos // 4)
    multi = f"runner=DirectRunner,direct_num_workers={args.workers},direct_running_mode=multi_processing"
    ways = {
        "pool": (args.workers, None),
        "beam_workers": (args.workers, multi),
        "beam_one": (1, "runner=DirectRunner"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        raw = synthetic.generate(
            Path(tmp) / "raw",
            num_classes=4,
            groups=groups,
            clips_per_group=1,
            num_frames=args.frames,
            height=120,
            width=160,
        )
        frames = 4 * groups * args.frames
        for name, (workers, beam) in ways.items():
            flags = [f"--beam_pipeline_options={beam}"] if beam else []
            wall = timed_build(raw, Path(tmp) / name, workers, flags)
            print(json.dumps(speed_row(name, 4 * groups, frames, "160x120", workers, wall)), flush=True)


if __name__ == "__main__":
    main()
