"""Raw UCF101 / HMDB51 / folder videos -> sharded TFRecords of RGB JPEGs and TV-L1 flow JPEGs.

    python -m data_prep.build --dataset=ucf101 --raw_dir=RAW --out_dir=OUT [--workers=N]
        [--flow_backend=auto|opencv|jax]

Work happens in two phases. (1) Every video is decoded, resized and given TV-L1 flow; its record
is written to OUT/work/<video_id>.tfrecord atomically, so a run that is interrupted and started
again skips the finished videos. With --flow_backend=opencv a pool of worker processes does all
of it (OpenCV's CPU TV-L1); with jax the workers decode and JPEG-encode while this process
computes the flow of batches of frame pairs, gathered across videos, with our JAX TV-L1 on the
accelerator (auto: jax where JAX sees a GPU or TPU, else opencv). (2) Per split, the records are
assembled in sorted order into OUT/split<N>/{train,test}-XXXXX-of-YYYYY.tfrecord and
OUT/metadata.json is written; both replace their old versions only once complete. Unusable videos
(unreadable, empty, a single frame) are skipped, listed in the metadata and at the end, and make
the exit code 1 unless --allow_failures is given. Layout problems stop the run before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from cvtcl_jax.data.records import FLOW_BOUND, FORMAT_VERSION, VideoRecord, frame_size
from cvtcl_jax.flow.params import OPENCV_DEFAULTS
from data_prep.layouts import LAYOUTS, Layout, LayoutError, Video
from data_prep.video import VideoError, decode_video, encode_flows, process_video, quantize_flow

WORK = "work"
DEFAULT_FLOW_BATCH = 16  # pairs per JAX flow batch on an accelerator (not yet tuned on one)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    p.add_argument("--raw_dir", required=True, help="the dataset as downloaded (see docs/data.md)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--splits", default="1", help="comma-separated split numbers, e.g. 1,2,3")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="worker processes (default: all cores)"
    )
    p.add_argument("--short_side", type=int, default=128, help="stored frames' short side in pixels")
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--videos_per_shard", type=int, default=64)
    p.add_argument("--no_flow", action="store_true", help="store RGB only (no TV-L1)")
    p.add_argument(
        "--flow_backend",
        default="auto",
        choices=("auto", "opencv", "jax"),
        help="who computes TV-L1: OpenCV on the CPU workers, or JAX on this host's accelerator "
        "(auto: jax where JAX sees a GPU or TPU)",
    )
    p.add_argument(
        "--flow_batch",
        type=int,
        default=None,
        help="frame pairs per JAX flow batch (default: 1 on a CPU, where a batch runs until its slowest "
        f"pair stops; {DEFAULT_FLOW_BATCH} on an accelerator)",
    )
    p.add_argument(
        "--flow_bucket", type=int, default=32, help="JAX flow buffers: each side rounded up to a multiple"
    )
    p.add_argument(
        "--flow_memory_gib",
        type=float,
        default=4.0,
        help="JAX flow backend: decoded videos waiting for their flow hold at most about this much",
    )
    p.add_argument("--allow_failures", action="store_true", help="exit 0 even if some videos failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        args.split_numbers = sorted({int(s) for s in args.splits.split(",")})
    except ValueError:
        p.error(f"--splits must be comma-separated numbers, got {args.splits!r}")
    if not all(1 <= n <= 3 for n in args.split_numbers):
        p.error(f"--splits must be among 1, 2, 3; got {args.splits!r}")
    for name in ("workers", "short_side", "videos_per_shard", "flow_batch", "flow_bucket"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.flow_memory_gib <= 0:
        p.error("--flow_memory_gib must be positive")
    if not 1 <= args.jpeg_quality <= 100:
        p.error("--jpeg_quality must be in 1..100")
    return args


def _work_path(out_dir: Path, video: Video) -> Path:
    return out_dir / WORK / f"{video.video_id}.tfrecord"


def _failure(e: Exception) -> str:
    if isinstance(e, VideoError):
        return str(e)
    # A decoder crash on a corrupt file must not stop the other videos.
    return f"failed: {type(e).__name__}: {e}"


def _process(job):
    """Worker, opencv backend: decode + flow one video. -> (index, result or None, reason or None)."""
    index, path, short_side, quality, with_flow = job
    try:
        return index, process_video(path, short_side, quality, with_flow), None
    except Exception as e:
        return index, None, _failure(e)


def _decode(job):
    """Worker, jax backend: decode one video and encode its RGB. -> (index, result, reason)."""
    index, path, short_side, quality, _ = job
    try:
        return index, decode_video(path, short_side, quality), None
    except Exception as e:
        return index, None, _failure(e)


def _encode(job):
    """Worker, jax backend: the quantised flows of one video -> JPEGs. -> (index, JPEGs, reason)."""
    index, flows_u8, size, quality = job
    try:
        return index, encode_flows(flows_u8, size, quality), None
    except Exception as e:
        return index, None, _failure(e)


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


def resolve_flow_backend(requested: str) -> str:
    """'auto' -> 'jax' where JAX's default backend is a GPU or TPU, else 'opencv'."""
    if requested != "auto":
        return requested
    import jax

    return "jax" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "opencv"


def flow_batch(args) -> int:
    """--flow_batch, or its default for JAX's default backend."""
    if args.flow_batch is not None:
        return args.flow_batch
    import jax

    return 1 if jax.default_backend() == "cpu" else DEFAULT_FLOW_BATCH


def flow_description(backend: str, args) -> dict:
    """What metadata.json and the work directory record of the flow: method, backend, parameters."""
    import cv2

    if backend == "jax":
        import jax

        # The batch shape is the compiled program, which fixes the flow's float rounding.
        version = (
            f"cvtcl_jax TV-L1 on jax {jax.__version__}, {jax.default_backend()}, "
            f"batches of {flow_batch(args)}, buffers in multiples of {args.flow_bucket}"
        )
    else:
        version = f"OpenCV {cv2.__version__} DualTVL1OpticalFlow (CPU)"
    return {
        "method": "Dual TV-L1 (OpenCV's CPU algorithm), grayscale, native size",
        "backend": backend,
        "backend_version": version,
        "parameters": dataclasses.asdict(OPENCV_DEFAULTS),
        "bound_pixels": FLOW_BOUND,
        "quantisation": "round((v + 20) * 255 / 40), channels (dx, dy, 128)",
    }


def check_flow_backend(out_dir: Path, backend: str | None) -> str | None:
    """Records the work directory's flow backend; an error message if it was started with another.

    The work directory caches finished videos, so mixing backends in one dataset would go unseen.
    """
    path = out_dir / WORK / "flow_backend.json"
    if path.exists():
        started = json.loads(path.read_text())["backend"]
        if started != backend:

            def flag(b):
                return "--no_flow" if b is None else f"--flow_backend={b}"

            return (
                f"{out_dir / WORK} was started with {flag(started)}, this run asks for {flag(backend)}: "
                f"rerun with {flag(started)}, or delete {out_dir / WORK} to prepare every video again"
            )
        return None
    (out_dir / WORK).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": backend}))
    return None


class _Writer:
    """Writes each finished video's work record."""

    def __init__(self, layout: Layout, out_dir: Path):
        self.layout, self.out_dir = layout, out_dir
        self.sources = layout.source_ids()

    def __call__(self, index: int, rgb, flows, fps, size) -> None:
        video = self.layout.videos[index]
        record = VideoRecord(
            video_id=video.video_id,
            class_name=video.class_name,
            label=video.label,
            source=video.source,
            source_id=self.sources[video.source],
            video_index=index,
            fps=fps,
            height=size[0],
            width=size[1],
            frames=rgb,
            flows=flows,
        )
        _write_tfrecord(_work_path(self.out_dir, video), [record.to_proto_bytes()])


def process_videos(layout: Layout, args, out_dir: Path, backend: str | None) -> dict[str, str]:
    """Phase 1: every not yet finished video -> work file. Returns {video_id: failure reason}."""
    (out_dir / WORK).mkdir(parents=True, exist_ok=True)
    todo = [i for i, v in enumerate(layout.videos) if not _work_path(out_dir, v).exists()]
    done = len(layout.videos) - len(todo)
    print(
        f"{layout.dataset}: {len(layout.videos)} videos, {done} already prepared, {len(todo)} to do"
        + (f"; flow by {backend}" if backend else ""),
        flush=True,
    )
    jobs = [(i, layout.videos[i].path, args.short_side, args.jpeg_quality, backend is not None) for i in todo]
    failures = {}
    if not jobs:
        return failures
    from tqdm import tqdm

    write = _Writer(layout, out_dir)
    workers = min(args.workers, len(jobs))
    with (
        multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool,
        tqdm(total=len(jobs), unit="video", disable=args.quiet) as bar,
    ):
        if backend == "jax":
            _jax_flow_videos(pool, workers, jobs, args, write, failures, bar)
            return failures
        for index, result, reason in pool.imap_unordered(_process, jobs, chunksize=1):
            if reason is not None:
                failures[layout.videos[index].video_id] = reason
            else:
                write(index, *result)
            bar.update()
    return failures


@dataclasses.dataclass
class _Decoded:
    """A decoded video waiting for its flows."""

    rgb: list[bytes]
    fps: float
    size: tuple[int, int]
    flows: list  # quantised (H, W, 2) uint8 per pair, None until computed
    missing: int


def _jax_flow_videos(pool, workers, jobs, args, write, failures, bar) -> None:
    """The jax backend: workers decode and encode, this process computes the flow in batches.

    A video is decoded whole; a new decode starts only while the decoded videos not yet written
    hold less than --flow_memory_gib (their native grayscale frames and quantised flows, 3 bytes
    per pixel and frame), so memory stays within that plus one video per worker, however long the
    videos. The flow batcher holds at most two batches in flight.
    """
    from cvtcl_jax.flow.batching import FlowBatcher

    batcher = FlowBatcher(batch_size=flow_batch(args), multiple=args.flow_bucket)
    budget = args.flow_memory_gib * 2**30
    queue = list(reversed(jobs))
    decoding, waiting, encoding = {}, {}, {}
    held = {}  # index -> bytes held for a decoded video until it is written or fails

    def fail(index, reason):
        failures[write.layout.videos[index].video_id] = reason
        held.pop(index, None)
        bar.update()

    while queue or decoding or waiting or encoding:
        while queue and len(decoding) < workers and sum(held.values()) < budget:
            job = queue.pop()
            decoding[job[0]] = pool.apply_async(_decode, (job,))
        progressed = False
        for index in [i for i, r in decoding.items() if r.ready()]:
            progressed = True
            _, result, reason = decoding.pop(index).get()
            if reason is not None:
                fail(index, reason)
                continue
            rgb, gray, fps, size = result
            held[index] = 3 * sum(g.nbytes for g in gray)
            waiting[index] = _Decoded(rgb, fps, size, [None] * (len(gray) - 1), len(gray) - 1)
            for i in range(len(gray) - 1):
                batcher.add((index, i), gray[i], gray[i + 1])
        if not decoding and batcher.pending:
            # Nothing more is coming for now (memory budget reached or no videos left): run the
            # partial batches.
            batcher.flush()
        for (index, i), flow in batcher.results(wait=not decoding and not encoding):
            progressed = True
            video = waiting[index]
            video.flows[i] = quantize_flow(flow)
            video.missing -= 1
            if video.missing == 0:
                del waiting[index]
                job = (index, video.flows, video.size, args.jpeg_quality)
                encoding[index] = (video, pool.apply_async(_encode, (job,)))
        for index in [i for i, (_, r) in encoding.items() if r.ready()]:
            progressed = True
            video, result = encoding.pop(index)
            _, flows, reason = result.get()
            if reason is not None:
                fail(index, reason)
                continue
            write(index, video.rgb, flows, video.fps, video.size)
            del held[index]
            bar.update()
        if not progressed:
            time.sleep(0.002)


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
            shards, sizes, largest = [], [], [0, 0]
            for s in range(n_shards):
                name = f"{subset}-{s:05d}-of-{n_shards:05d}.tfrecord"
                chunk = ready[s * args.videos_per_shard : (s + 1) * args.videos_per_shard]
                raws = [_read_work(_work_path(out_dir, by_id[i])) for i in chunk]
                for raw in raws:
                    largest = [max(a, b) for a, b in zip(largest, frame_size(raw), strict=True)]
                _write_tfrecord(staging / name, raws)
                shards.append(f"{split}/{name}")
                sizes.append(len(chunk))
            # Per-shard counts let the input pipeline place a resumed run inside an epoch without
            # reading the shards; the largest frame is the static shape of on-device resizing.
            summary[split][subset] = {
                "num_videos": len(ready),
                "shards": shards,
                "shard_sizes": sizes,
                "max_frame_size": largest,
            }
        final = out_dir / split
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    return summary


def write_metadata(
    layout: Layout, args, out_dir: Path, summary: dict, failures: dict[str, str], backend: str | None
) -> None:
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
            "flow": None if backend is None else flow_description(backend, args),
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
    backend = None if args.no_flow else resolve_flow_backend(args.flow_backend)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (error := check_flow_backend(out_dir, backend)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failures = process_videos(layout, args, out_dir, backend)
    summary = assemble(layout, args, out_dir, failures)
    write_metadata(layout, args, out_dir, summary, failures, backend)
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
