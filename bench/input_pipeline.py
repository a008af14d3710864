"""Pretraining input pipeline throughput per CPU core, at the paper's sample size.

    python bench/input_pipeline.py [--threads 1 2] [--batches 12] [--on_device none color resize]
        [--data_dir DIR]

Without --data_dir it writes a stand-in dataset first: 24 videos of 150 frames at 171x128 (UCF101's
320x240 with the short side at 128), textured moving objects as RGB JPEGs and smooth flow fields
as flow JPEGs, as a TFDS dataset with data_prep's features. Each sample is what the init / co-training step
eats: query and key clips of 32 frames, the anchor and 4 segments of 8 frames, all 128x128 with
the full augmentation (co-training adds the flow key clip). Prints one JSON line per (mode,
on_device, threads): samples/s and samples/s per thread (the tf.data pool is capped at
`threads`), the bytes of one shipped host batch and, where the devices have work to do
(`data.aug.on_device` 'color' or 'resize', see cvtcl_jax/data/device_augment.py), the time the
jitted device part takes per sample on JAX's default device (`device_ms_per_sample`, compile
excluded) and the device bytes of one batch in and out of it.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from cvtcl_jax.data import device_augment, records, training_clips  # noqa: E402
from cvtcl_jax.data.augment import AugmentConfig  # noqa: E402
from cvtcl_jax.data.clip_spec import ClipSpec  # noqa: E402
from cvtcl_jax.data.dataset_info import load_dataset_info  # noqa: E402
from cvtcl_jax.sharding import make_mesh, shard_batch  # noqa: E402
from data_prep import video  # noqa: E402
from generated import synthetic  # noqa: E402

HEIGHT, WIDTH = 128, 171
STANDIN = "standin_videos/split1"


def write_standin(root: Path, num_videos: int, num_frames: int) -> None:
    rng = np.random.default_rng(0)
    motions = list(synthetic.MOTIONS.values())
    examples = []
    for v in range(num_videos):
        appearance = (synthetic.texture(rng, HEIGHT, WIDTH, 120), synthetic.texture(rng, HEIGHT, WIDTH, 90))
        frames = synthetic.render_clip(rng, motions[v % len(motions)], appearance, num_frames, HEIGHT, WIDTH)
        rgb = [video.encode_jpeg(f, 90) for f in frames]
        flows = []
        for _ in range(num_frames - 1):
            field = synthetic.texture(rng, HEIGHT, WIDTH, 0)[..., :2] / 12.0
            flows.append(video.encode_flow_jpeg(video.quantize_flow(field.astype(np.float32)), 90))
        examples.append(
            dict(
                video_id=f"v{v}", label=0, source=f"s{v}", source_id=v, video_index=v, fps=25.0, height=HEIGHT
            )
            | dict(width=WIDTH, num_frames=num_frames, num_flow=num_frames - 1, rgb=rgb, flow=flows)
        )
    features = records.video_features(["c"])
    meta = {"max_frame_size": {"train": [HEIGHT, WIDTH]}}
    records.write_dataset(root, STANDIN, features, {"train": examples}, -(-num_videos // 4), meta)


def measure(info, views, aug: AugmentConfig, threads: int, batches: int, batch: int) -> tuple[float, dict]:
    """(samples/s, the last batch)."""
    ds = training_clips.pretrain_dataset(
        info,
        subset="train",
        views=views,
        local_batch=batch,
        spec=ClipSpec(),
        aug=aug,
        seed=0,
        threads=threads,
    )
    it = ds.as_numpy_iterator()
    for _ in itertools.islice(it, 3):  # tracing, first file reads, autotuning
        pass
    start = time.perf_counter()
    (last,) = collections.deque(itertools.islice(it, batches), maxlen=1)
    return batches * batch / (time.perf_counter() - start), last


def device_side(batch: dict, aug: AugmentConfig, repeats: int = 3) -> dict:
    """Milliseconds per sample of the jitted device part on one device (compile excluded), and the
    MB of one batch as shipped to the device and as the step receives it."""
    mesh = make_mesh(jax.devices()[:1])
    augment = device_augment.make_batch_augmenter(mesh, aug.blur_kernel_size, ClipSpec().crop_size)
    arrays = shard_batch(mesh, {k: v for k, v in batch.items() if k != "padded"})
    out = jax.block_until_ready(augment(arrays))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(augment(arrays))
    ms = (time.perf_counter() - start) / repeats / len(batch["ids"]) * 1e3
    return {
        "device_ms_per_sample": round(ms, 2),
        "device_mb_in": round(_megabytes(arrays), 1),
        "device_mb_out": round(_megabytes(out), 1),
        "device": jax.devices()[0].device_kind,
    }


def _megabytes(batch: dict) -> float:
    return sum(v.nbytes for v in batch.values()) / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--data_dir", default=None, help="a TFDS data_dir (default: write a stand-in)")
    p.add_argument("--name", default=None, help="with --data_dir: the dataset, e.g. cvtcl_ucf101/split1")
    p.add_argument(
        "--on_device", nargs="+", choices=device_augment.ON_DEVICE, default=list(device_augment.ON_DEVICE)
    )
    p.add_argument("--device_repeats", type=int, default=3, help="timed runs of the device part (0: none)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            write_standin(root, 24, 150)
        info = load_dataset_info(root, args.name or STANDIN)
        modes = (("init (rgb)", ("rgb",)), ("cotrain (rgb + flow)", ("rgb", "flow")))
        for (mode, views), on_device in itertools.product(modes, args.on_device):
            aug = AugmentConfig(on_device=on_device)
            for i, threads in enumerate(sorted(set(args.threads))):
                rate, last = measure(info, views, aug, threads, args.batches, args.batch)
                row = {
                    "mode": mode,
                    "on_device": on_device,
                    "threads": threads,
                    "samples_per_s": round(rate, 1),
                }
                row["samples_per_s_per_thread"] = round(rate / threads, 1)
                row["host_mb_per_batch"] = round(_megabytes(last), 1)
                if on_device != "none" and i == 0 and args.device_repeats:
                    row.update(device_side(last, aug, args.device_repeats))
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
