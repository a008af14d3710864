"""Raw UCF101 / HMDB51 / Kinetics / folder videos -> TFDS datasets of RGB JPEGs and TV-L1 flow JPEGs.

    python -m data_prep.build --dataset=ucf101 --raw_dir=RAW --out_dir=DATA [--splits=1,2,3]
        [--workers=N] [--flow_backend=auto|opencv|jax] [--beam_pipeline_options=...]

From frames and flow other tools already extracted (CoCLR / MemDPC folders, CoCLR's LMDBs,
mmaction2 rawframes; data_prep/extracted.py), no video decoded and the given flow never
recomputed; RAW then supplies only the split lists and classes:

    python -m data_prep.build --dataset=ucf101 --raw_dir=RAW --out_dir=DATA \
        --rgb_from=FRAMES [--flow_from=FLOW] [--flow_bound=20]

A thin wrapper around the TFDS builders of data_prep/builders.py (the same as `tfds build
cvtcl_ucf101 --imports=data_prep.builders --manual_dir=RAW --data_dir=DATA`): --out_dir is the
TFDS data_dir, the datasets are `cvtcl_<dataset>/split<N>` (Kinetics: `cvtcl_kinetics/k<version>`),
read by the config's data.dir and data.name.

Work happens in two phases. (1) Unless --beam_pipeline_options is given, every video not yet in
the per-video cache (DATA/downloads/cvtcl_video_cache/, data_prep/video_cache.py) is prepared on
this machine: with --flow_backend=opencv a pool of worker processes decodes and computes OpenCV's
CPU TV-L1; with jax the workers decode and JPEG-encode while this process computes the flow of
batches of frame pairs, gathered across videos, with our JAX TV-L1 on the accelerator (auto: jax
where JAX sees a GPU or TPU, else opencv). (2) Per split list, the builder's Beam pipeline writes
the TFDS dataset from the cache (in this process by default; with --beam_pipeline_options, on that
runner, which then also prepares the videos phase 1 left). An interrupted run started again skips
the finished videos. Unusable videos (unreadable, empty, a single frame) are skipped, listed in the
dataset's metadata and at the end, and make the exit code 1 unless --allow_failures is given;
so are videos whose given frames or flow are missing, unreadable or of the wrong count. Layout
problems (and a --rgb_from / --flow_from whose layout is not recognised, or that holds none of the
listed videos) stop the run before any work with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from cvtcl_jax import console
from data_prep.extracted import LAYOUTS as LAYOUT_NAMES
from data_prep.extracted import SourceError
from data_prep.layouts import LAYOUTS, LayoutError, Video
from data_prep.video import GIVEN_FLOW, quantize_flow


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    p.add_argument(
        "--raw_dir", required=True, help="the dataset as downloaded (TFDS's manual_dir; see docs/data.md)"
    )
    p.add_argument("--out_dir", required=True, help="the TFDS data_dir the datasets are written to")
    p.add_argument("--splits", default="1", help="comma-separated split lists, e.g. 1,2,3 (not for kinetics)")
    p.add_argument(
        "--kinetics_version", default="400", choices=("400", "600", "700"), help="names the config"
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="worker processes (default: all cores)"
    )
    p.add_argument("--short_side", type=int, default=128, help="stored frames' short side in pixels")
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument(
        "--num_shards",
        type=int,
        default=None,
        help="record files per split (default: TFDS's, by size); training on H hosts needs at least H",
    )
    p.add_argument("--no_flow", action="store_true", help="store RGB only (no TV-L1)")
    p.add_argument(
        "--rgb_from",
        default=None,
        help="frames another tool extracted (CoCLR/MemDPC folders, CoCLR's LMDB, mmaction2 rawframes), "
        "read instead of decoding the videos; without --flow_from the flow is computed from them",
    )
    p.add_argument(
        "--flow_from",
        default=None,
        help="TV-L1 flow another tool extracted (CoCLR/MemDPC flow folders, CoCLR's flow LMDB, mmaction2 "
        "rawframes), stored as given; needs --rgb_from",
    )
    p.add_argument(
        "--rgb_layout", default=None, choices=LAYOUT_NAMES, help="--rgb_from's layout (default: detected)"
    )
    p.add_argument(
        "--flow_layout", default=None, choices=LAYOUT_NAMES, help="--flow_from's layout (default: detected)"
    )
    p.add_argument(
        "--flow_bound",
        type=float,
        default=20.0,
        help="mmaction2 flow: the bound b its JPEGs were quantised with, 255 (f + b) / 2b (CoCLR's is 20)",
    )
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
        "pair stops; 16 on an accelerator)",
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
    p.add_argument(
        "--beam_pipeline_options",
        default=None,
        help="comma-separated Beam options (e.g. runner=DirectRunner,direct_num_workers=4,"
        "direct_running_mode=multi_processing, or a DataflowRunner's): the runner prepares the videos",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="rebuild a dataset that exists (the cache is kept)"
    )
    p.add_argument("--allow_failures", action="store_true", help="exit 0 even if some videos failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="the full log stream (TensorFlow, Beam, TFDS) on the console instead of OUT_DIR/logs/",
    )
    args = p.parse_args(argv)
    try:
        args.split_numbers = sorted({int(s) for s in args.splits.split(",")})
    except ValueError:
        p.error(f"--splits must be comma-separated numbers, got {args.splits!r}")
    if not all(1 <= n <= 3 for n in args.split_numbers):
        p.error(f"--splits must be among 1, 2, 3; got {args.splits!r}")
    for name in ("workers", "short_side", "num_shards", "flow_batch", "flow_bucket"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.flow_memory_gib <= 0:
        p.error("--flow_memory_gib must be positive")
    if not 1 <= args.jpeg_quality <= 100:
        p.error("--jpeg_quality must be in 1..100")
    if args.flow_from and not args.rgb_from:
        p.error("--flow_from needs --rgb_from: give the frames the flow was computed from too")
    if args.flow_from and args.no_flow:
        p.error("--flow_from and --no_flow contradict each other")
    if args.flow_bound <= 0:
        p.error("--flow_bound must be positive")
    return args


def frame_sources(args):
    """(rgb_from, flow_from) FrameSources of the flags (None where not given); SourceError when a
    path's layout is not recognised."""
    from data_prep.extracted import detect

    rgb = detect(args.rgb_from, "rgb", args.rgb_layout) if args.rgb_from else None
    flow = detect(args.flow_from, "flow", args.flow_layout, args.flow_bound) if args.flow_from else None
    return rgb, flow


def builders(args, rgb_from=None, flow_from=None, data_dir=None):
    """The TFDS builders this command runs: one per split list (Kinetics: one), in --out_dir or
    in `data_dir`."""
    from data_prep.builders import BUILDERS, dataset_configs

    params = dict(short_side=args.short_side, jpeg_quality=args.jpeg_quality, flow=not args.no_flow)
    configs = dataset_configs(args.dataset, args.split_numbers, args.kinetics_version, **params)
    flow = dict(flow_backend=args.flow_backend, flow_batch=args.flow_batch, flow_bucket=args.flow_bucket)
    inputs = dict(rgb_from=rgb_from, flow_from=flow_from)
    out = data_dir or args.out_dir
    return [BUILDERS[args.dataset](config=c, data_dir=out, **flow, **inputs) for c in configs]


def _is_built(builder) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").is_file()


def existing_differs(builder, args, prep) -> str | None:
    """How the dataset `builder` already holds differs from what this command would build (its
    shard count, its frames' or flow's source), or None (same, or no dataset yet)."""
    if not _is_built(builder):
        return None
    from data_prep.builders import build_parameters

    info = builder.info
    shards = sorted({s.num_shards for s in info.splits.values()})
    if args.num_shards is not None and shards != [args.num_shards]:
        return f"{', '.join(map(str, shards))} shard(s) per split, not --num_shards={args.num_shards}"
    old, new = dict(info.metadata.get("parameters", {})), build_parameters(prep)
    # Datasets built before frames could be given were built from the videos.
    theirs, ours = old.get("frames", new["frames"] if prep.rgb_from is None else None), new["frames"]
    if theirs != ours:
        return f"frames from {theirs}, not from {ours}"
    # Both flow backends store the same flow; given flow is another matter.
    theirs, ours = (old.get("flow") or {}).get("source"), (new.get("flow") or {}).get("source")
    if theirs != ours:

        def said(source):
            return f"given by {source}" if source else "computed from the frames"

        return f"flow {said(theirs)}, not {said(ours)}"
    return None


def replace_dataset(final, staged) -> None:
    """Moves the dataset `staged` built beside `final`'s into its place, then deletes the old one:
    a crash leaves the old dataset or the new one, never neither complete."""
    old, new = Path(final.data_dir), Path(staged.data_dir)
    aside = old.with_name(old.name + ".replaced")
    shutil.rmtree(aside, ignore_errors=True)
    old.rename(aside)
    new.rename(old)
    shutil.rmtree(aside)
    shutil.rmtree(new.parents[2], ignore_errors=True)  # the staging data_dir


def _process(job):
    """Worker, opencv backend or given flow: one video. -> (index, PreparedVideo or None, reason)."""
    from data_prep.video import compute_video, failure_reason

    index, video, prep = job
    try:
        return index, compute_video(video, prep), None
    except Exception as e:
        return index, None, failure_reason(e)


def _decode(job):
    """Worker, jax backend: decode one video and encode its RGB. -> (index, result, reason)."""
    from data_prep.video import decode_input, failure_reason

    index, video, prep = job
    try:
        return index, decode_input(video, prep), None
    except Exception as e:
        return index, None, failure_reason(e)


def _encode(job):
    """Worker, jax backend: the quantised flows of one video -> JPEGs. -> (index, JPEGs, reason)."""
    from data_prep.video import encode_flows, failure_reason

    index, flows_u8, size, quality = job
    try:
        return index, encode_flows(flows_u8, size, quality), None
    except Exception as e:
        return index, None, failure_reason(e)


def _worker_init():
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the pool; nested threads only oversubscribe


def prepare_videos(videos: list[Video], prep, workers: int, memory_gib: float, quiet: bool) -> dict[str, str]:
    """Phase 1: every video not yet in the cache, on this machine. Returns {video_id: failure reason}."""
    from data_prep.video import PreparedVideo
    from data_prep.video_cache import VideoCache

    cache = VideoCache(prep.cache_dir, prep.input_bytes)
    todo = [i for i, v in enumerate(videos) if not (cache.outcome(v) or {}).get("ok")]
    console.say(
        f"{len(videos)} videos, {len(videos) - len(todo)} already prepared, {len(todo)} to do"
        + (f"; frames from {prep.rgb_from.path}" if prep.rgb_from else "")
        + (f"; flow by {prep.flow_backend}" if prep.flow_backend not in (None, GIVEN_FLOW) else "")
        + (f"; flow as given in {prep.flow_from.path}" if prep.flow_backend == GIVEN_FLOW else "")
    )
    failures = {}
    if not todo:
        return failures

    def write(index, prepared: PreparedVideo):
        cache.save(videos[index], prepared)

    def fail(index, reason):
        failures[videos[index].video_id] = reason
        cache.save_failure(videos[index], reason)

    jobs = [(i, videos[i], prep) for i in todo]
    workers = min(workers, len(jobs))
    with (
        multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool,
        console.Progress(len(jobs), "preparing videos", unit="video", enabled=not quiet) as bar,
    ):
        if prep.flow_backend == "jax":
            _jax_flow_videos(pool, workers, jobs, prep, memory_gib, write, fail, bar)
            return failures
        for index, result, reason in pool.imap_unordered(_process, jobs, chunksize=1):
            if reason is not None:
                fail(index, reason)
            else:
                write(index, result)
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


def _jax_flow_videos(pool, workers, jobs, prep, memory_gib, write, fail, bar) -> None:
    """The jax backend: workers decode and encode, this process computes the flow in batches.

    A video is decoded whole; a new decode starts only while the decoded videos not yet written
    hold less than memory_gib (their native grayscale frames and quantised flows, 3 bytes
    per pixel and frame), so memory stays within that plus one video per worker, however long the
    videos. The flow batcher holds at most two batches in flight.
    """
    from cvtcl_jax.flow.batching import FlowBatcher
    from data_prep.video import PreparedVideo

    batcher = FlowBatcher(batch_size=prep.flow_batch, multiple=prep.flow_bucket)
    budget = memory_gib * 2**30
    queue = list(reversed(jobs))
    decoding, waiting, encoding = {}, {}, {}
    held = {}  # index -> bytes held for a decoded video until it is written or fails

    def failed(index, reason):
        fail(index, reason)
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
                failed(index, reason)
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
                job = (index, video.flows, video.size, prep.jpeg_quality)
                encoding[index] = (video, pool.apply_async(_encode, (job,)))
        for index in [i for i, (_, r) in encoding.items() if r.ready()]:
            progressed = True
            video, result = encoding.pop(index)
            _, flows, reason = result.get()
            if reason is not None:
                failed(index, reason)
                continue
            write(index, PreparedVideo(video.rgb, flows, video.fps, video.size))
            del held[index]
            bar.update()
        if not progressed:
            time.sleep(0.002)


def beam_options(spec: str | None):
    """--beam_pipeline_options -> PipelineOptions; none given: Beam's default runner in this process
    (an explicit empty list, so Beam does not read this command's own flags)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions([f"--{opt}" for opt in spec.split(",") if opt] if spec else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow_datasets as tfds

    try:
        chosen = builders(args, *frame_sources(args))
        layouts = [b.read_layout(args.raw_dir) for b in chosen]
    except (LayoutError, SourceError, ValueError, OSError) as e:
        console.error(str(e))
        return 2
    download_dir = os.path.join(args.out_dir, "downloads")
    prep = chosen[0].preparation(download_dir)
    for builder in chosen:
        differs = existing_differs(builder, args, prep)
        if differs and not args.overwrite:
            console.error(
                f"{builder.info.full_name} in {args.out_dir} exists with {differs}. Rebuild it with "
                "--overwrite (the new dataset is built beside the old one, which is replaced only once the "
                "new one is complete), or choose another --out_dir"
            )
            return 2
    # --overwrite builds each existing dataset in a staging data_dir, then swaps it in.
    staging = os.path.join(args.out_dir, ".overwrite_staging")
    staged = builders(args, chosen[0].rgb_from, chosen[0].flow_from, data_dir=staging)
    if args.beam_pipeline_options is None:
        videos = {v.video_id: v for layout in layouts for v in layout.videos}
        prepare_videos(
            sorted(videos.values(), key=lambda v: v.rel), prep, args.workers, args.flow_memory_gib, args.quiet
        )
    failed = {}
    for i, (builder, beside, layout) in enumerate(zip(chosen, staged, layouts, strict=True)):
        config = tfds.download.DownloadConfig(
            manual_dir=args.raw_dir,
            beam_options=beam_options(args.beam_pipeline_options),
            num_shards=args.num_shards,
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        )
        if args.overwrite and _is_built(builder):
            shutil.rmtree(beside.data_dir, ignore_errors=True)
            beside.download_and_prepare(download_dir=download_dir, download_config=config)
            replace_dataset(builder, beside)
            builder = builders(args, builder.rgb_from, builder.flow_from)[i]  # reads the new dataset
        else:
            builder.download_and_prepare(download_dir=download_dir, download_config=config)
        meta = builder.info.metadata
        counts = ", ".join(f"{s} {v.num_examples}" for s, v in builder.info.splits.items())
        console.say(f"{builder.info.full_name}: {counts} videos in {builder.data_dir}")
        if layout.missing:
            console.say(
                f"  {len(layout.missing)} video(s) listed in the annotations are missing from {args.raw_dir}"
            )
        failed.update({f["video_id"]: f["reason"] for f in meta.get("failures", [])})
    names = " or ".join(f"{b.name}/{b.builder_config.name}" for b in chosen)
    console.say(f"train and evaluate with --config.data.dir={args.out_dir} --config.data.name={names}")
    if failed:
        console.warn(f"{len(failed)} video(s) could not be prepared and were skipped:")
        for vid, reason in sorted(failed.items()):
            console.warn(f"  {vid}: {reason}")
        return 0 if args.allow_failures else 1
    return 0


def cli() -> int:
    """The command: main() with everything but its own lines in OUT_DIR/logs/ (--verbose: not)."""
    args = parse_args()
    console.start(os.path.join(args.out_dir, "logs"), "build", verbose=args.verbose)
    try:
        return main()
    except Exception as e:
        traceback.print_exc()  # to the log
        console.error(f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(cli())
