"""Raw UCF101 / HMDB51 / folder videos -> sharded TFRecords of RGB JPEGs and TV-L1 flow JPEGs.

    python -m data_prep.build --dataset=ucf101 --raw_dir=RAW --out_dir=OUT [--workers=N]

Work happens in two phases. (1) Every video is decoded, resized and given TV-L1 flow by a pool of
worker processes; its record is written to OUT/work/<video_id>.tfrecord atomically, so a run
that is interrupted and started again skips the finished videos. (2) Per split, the records are
assembled in sorted order into OUT/split<N>/{train,test}-XXXXX-of-YYYYY.tfrecord and
OUT/metadata.json is written; both replace their old versions only once complete. Unusable videos
(unreadable, empty, a single frame) are skipped, listed in the metadata and at the end, and make
the exit code 1 unless --allow_failures is given. Layout problems stop the run before any work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

from data_prep.layouts import LAYOUTS, Layout, LayoutError, Video
from data_prep.records import FLOW_BOUND, FORMAT_VERSION, VideoRecord
from data_prep.video import VideoError, process_video

WORK = "work"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    p.add_argument("--raw_dir", required=True, help="the dataset as downloaded (see README)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--splits", default="1", help="comma-separated split numbers, e.g. 1,2,3")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="worker processes (default: all cores)"
    )
    p.add_argument("--short_side", type=int, default=128, help="stored frames' short side in pixels")
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--videos_per_shard", type=int, default=64)
    p.add_argument("--no_flow", action="store_true", help="store RGB only (no TV-L1)")
    p.add_argument("--allow_failures", action="store_true", help="exit 0 even if some videos failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        args.split_numbers = sorted({int(s) for s in args.splits.split(",")})
    except ValueError:
        p.error(f"--splits must be comma-separated numbers, got {args.splits!r}")
    if not all(1 <= n <= 3 for n in args.split_numbers):
        p.error(f"--splits must be among 1, 2, 3; got {args.splits!r}")
    for name in ("workers", "short_side", "videos_per_shard"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 1 <= args.jpeg_quality <= 100:
        p.error("--jpeg_quality must be in 1..100")
    return args


def _work_path(out_dir: Path, video: Video) -> Path:
    return out_dir / WORK / f"{video.video_id}.tfrecord"


def _process(job):
    """Worker: decode + flow one video. Returns (index, result or None, failure reason or None)."""
    index, path, short_side, quality, with_flow = job
    try:
        return index, process_video(path, short_side, quality, with_flow), None
    except VideoError as e:
        return index, None, str(e)
    except Exception as e:  # a decoder crash on a corrupt file must not stop the other videos
        return index, None, f"failed: {type(e).__name__}: {e}"


def _worker_init():
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the pool; nested threads only oversubscribe


def _write_tfrecord(path: Path, records) -> None:
    """Writes serialized records to `path` through a temporary file and an atomic rename."""
    import tensorflow as tf

    tmp = path.with_name(path.name + ".tmp")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:
            writer.write(record)
    os.replace(tmp, path)


def process_videos(layout: Layout, args, out_dir: Path) -> dict[str, str]:
    """Phase 1: every not yet finished video -> work file. Returns {video_id: failure reason}."""
    (out_dir / WORK).mkdir(parents=True, exist_ok=True)
    sources = layout.source_ids()
    todo = [i for i, v in enumerate(layout.videos) if not _work_path(out_dir, v).exists()]
    done = len(layout.videos) - len(todo)
    print(
        f"{layout.dataset}: {len(layout.videos)} videos, {done} already prepared, {len(todo)} to do",
        flush=True,
    )
    jobs = [(i, layout.videos[i].path, args.short_side, args.jpeg_quality, not args.no_flow) for i in todo]
    failures = {}
    if not jobs:
        return failures
    from tqdm import tqdm

    workers = min(args.workers, len(jobs))
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        results = pool.imap_unordered(_process, jobs, chunksize=1)
        for index, result, reason in tqdm(results, total=len(jobs), unit="video", disable=args.quiet):
            video = layout.videos[index]
            if reason is not None:
                failures[video.video_id] = reason
                continue
            rgb, flows, fps, (height, width) = result
            record = VideoRecord(
                video_id=video.video_id,
                class_name=video.class_name,
                label=video.label,
                source=video.source,
                source_id=sources[video.source],
                video_index=index,
                fps=fps,
                height=height,
                width=width,
                frames=rgb,
                flows=flows,
            )
            _write_tfrecord(_work_path(out_dir, video), [record.to_proto_bytes()])
    return failures


def _read_work(path: Path) -> bytes:
    import tensorflow as tf

    (raw,) = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    return raw


def assemble(layout: Layout, args, out_dir: Path, failures: dict[str, str]) -> dict:
    """Phase 2: per split and subset, shards of the prepared videos in sorted order."""
    by_id = {v.video_id: v for v in layout.videos}
    summary = {}
    for split, subsets in layout.splits.items():
        staging = out_dir / f".{split}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        summary[split] = {}
        for subset, ids in subsets.items():
            ready = [i for i in ids if i not in failures]
            n_shards = max(1, -(-len(ready) // args.videos_per_shard))
            shards, sizes = [], []
            for s in range(n_shards):
                name = f"{subset}-{s:05d}-of-{n_shards:05d}.tfrecord"
                chunk = ready[s * args.videos_per_shard : (s + 1) * args.videos_per_shard]
                _write_tfrecord(staging / name, (_read_work(_work_path(out_dir, by_id[i])) for i in chunk))
                shards.append(f"{split}/{name}")
                sizes.append(len(chunk))
            # Per-shard counts let the input pipeline place a resumed run inside an epoch without
            # reading the shards.
            summary[split][subset] = {"num_videos": len(ready), "shards": shards, "shard_sizes": sizes}
        final = out_dir / split
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    return summary


def write_metadata(layout: Layout, args, out_dir: Path, summary: dict, failures: dict[str, str]) -> None:
    by_id = {v.video_id: v for v in layout.videos}
    metadata = {
        "format_version": FORMAT_VERSION,
        "dataset": layout.dataset,
        "classes": layout.classes,
        "num_classes": len(layout.classes),
        "num_videos": len(layout.videos),
        "num_prepared": len(layout.videos) - len(failures),
        "splits": summary,
        "views": ["rgb"] if args.no_flow else ["rgb", "flow"],
        "parameters": {
            "short_side": args.short_side,
            "jpeg_quality": args.jpeg_quality,
            "flow": None
            if args.no_flow
            else {
                "method": "OpenCV DualTVL1OpticalFlow, default parameters, grayscale, native size",
                "bound_pixels": FLOW_BOUND,
                "quantisation": "round((v + 20) * 255 / 40), channels (dx, dy, 128)",
            },
        },
        "failures": [
            {"video_id": vid, "path": by_id[vid].rel, "reason": reason}
            for vid, reason in sorted(failures.items())
        ],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    tmp = out_dir / "metadata.json.tmp"
    tmp.write_text(json.dumps(metadata, indent=1))
    os.replace(tmp, out_dir / "metadata.json")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        layout = LAYOUTS[args.dataset](args.raw_dir, args.split_numbers)
    except (LayoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = process_videos(layout, args, out_dir)
    summary = assemble(layout, args, out_dir, failures)
    write_metadata(layout, args, out_dir, summary, failures)
    for split, subsets in summary.items():
        counts = ", ".join(f"{s} {v['num_videos']}" for s, v in subsets.items())
        print(f"{split}: {counts} videos")
    print(f"wrote {out_dir / 'metadata.json'}")
    if failures:
        print(f"{len(failures)} video(s) could not be prepared and were skipped:", file=sys.stderr)
        for vid, reason in sorted(failures.items()):
            print(f"  {vid}: {reason}", file=sys.stderr)
        return 0 if args.allow_failures else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
