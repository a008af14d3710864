"""TV-L1 flow speed: OpenCV's CPU DualTVL1OpticalFlow against our JAX TV-L1, in one run.

    python bench/tvl1.py [--sizes 320x240 426x240] [--batch 16] [--one_core]

For each frame size (WxH): OpenCV in one process with one thread, OpenCV on all cores (a process
pool, one thread each, as data_prep's workers run), then ours on JAX's default device (a GPU or
TPU where there is one) in batches of --batch pairs (every distinct pair, the last batch filled
by cycling: make --pairs a multiple of --batch or the other way round), with the compile time
apart and the
end-point error between the two flows on the same pairs. --one_core pins our run to one core, for
a per-core comparison on a CPU. The pairs are generated scenes (textured layers moving apart,
camera shake, noise: tests/flow_scenes.py). Prints one JSON line per backend and size, then the
projected flow time of UCF101 (13,320 videos, about 2.47 M pairs at 320x240) and Kinetics-400
(about 240,000 training videos of 10 s at 30 fps: 72 M pairs, at the 320x240 rate).

A host without OpenCV (a lent GPU machine) runs ours on pairs prepared elsewhere:
    python bench/tvl1.py --save_pairs pairs.npz            # here: pairs, OpenCV's flows and rates
    python bench/tvl1.py --load_pairs pairs.npz --batch 16 64   # there
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = {"UCF101": 2.47e6, "Kinetics-400": 72e6}


def _pairs(width: int, height: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from tests import flow_scenes

    pairs = []
    for seed in range(-(-count // 3)):
        pairs += [(a, b) for a, b, _ in flow_scenes.scenes(height, width, seed=seed).values()]
    return pairs[:count]


def _opencv(pair):
    import cv2

    from tests import flow_scenes

    cv2.setNumThreads(1)
    return flow_scenes.opencv_flow(*pair)


def bench_opencv(pairs, cores: int) -> tuple[list[np.ndarray], dict]:
    start = time.perf_counter()
    flows = [_opencv(p) for p in pairs]
    one = len(pairs) / (time.perf_counter() - start)
    row = {"backend": "opencv", "pairs_per_s_one_core": round(one, 3)}
    if cores > 1:
        work = pairs * max(1, -(-2 * cores // len(pairs)))
        with multiprocessing.get_context("spawn").Pool(cores) as pool:
            pool.map(_opencv, work[:cores])  # start-up
            start = time.perf_counter()
            pool.map(_opencv, work, chunksize=1)
            row[f"pairs_per_s_{cores}_cores"] = round(len(work) / (time.perf_counter() - start), 3)
    return flows, row


def bench_ours(pairs, batch: int, repeats: int, reference: list[np.ndarray]) -> dict:
    """Every distinct pair in batches of `batch` (cycled to fill the last), as OpenCV ran them."""
    import jax

    from cvtcl_jax.flow.tvl1 import tvl1_flow

    total = batch * -(-len(pairs) // batch)
    chosen = [pairs[i % len(pairs)] for i in range(total)]
    batches = [
        (np.stack([a for a, _ in chosen[i : i + batch]]), np.stack([b for _, b in chosen[i : i + batch]]))
        for i in range(0, total, batch)
    ]
    start = time.perf_counter()
    tvl1_flow(*batches[0]).block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        outs = [tvl1_flow(frames0, frames1) for frames0, frames1 in batches]
        outs[-1].block_until_ready()
    seconds = (time.perf_counter() - start) / repeats
    flows = np.concatenate([np.asarray(o) for o in outs])
    epe = np.concatenate(
        [np.linalg.norm(flows[i] - reference[i], axis=-1).ravel() for i in range(len(pairs))]
    )
    device = jax.devices()[0]
    return {
        "backend": "jax",
        "device": f"{device.platform} {device.device_kind}",
        "jax": jax.__version__,
        "batch": batch,
        "compile_and_first_s": round(first - seconds * batch / total, 1),
        "pairs_per_s": round(total / seconds, 3),
        "epe_vs_opencv_mean": round(float(epe.mean()), 4),
        "epe_vs_opencv_p99": round(float(np.percentile(epe, 99)), 3),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["320x240", "426x240"], help="frame sizes, WxH")
    p.add_argument("--pairs", type=int, default=6, help="distinct pairs per size (OpenCV runs each)")
    p.add_argument(
        "--batch", type=int, nargs="+", default=[16], help="pairs per JAX batch (several: a sweep)"
    )
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the pairs after the first batch")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="OpenCV processes for the all-cores row")
    p.add_argument("--one_core", action="store_true", help="pin our JAX run to one core (CPU per-core rate)")
    p.add_argument("--save_pairs", help="write the pairs, OpenCV's flows and rows to this .npz, then stop")
    p.add_argument(
        "--load_pairs",
        help="read them from a --save_pairs file instead of running OpenCV (a host without it)",
    )
    args = p.parse_args()
    if args.repeats < 1 or args.pairs < 1 or min(args.batch) < 1:
        p.error("--repeats, --pairs and --batch must be at least 1")
    if args.load_pairs:
        with np.load(args.load_pairs, allow_pickle=False) as f:
            rows = json.loads(str(f["rows"]))
            results = {
                tuple(size): [rows[k], list(f[f"flows{k}"]), list(zip(f[f"a{k}"], f[f"b{k}"], strict=True))]
                for k, size in enumerate(json.loads(str(f["sizes"])))
            }
    else:
        results = {}
        for width, height in (tuple(int(v) for v in s.lower().split("x")) for s in args.sizes):
            pairs = _pairs(width, height, args.pairs)
            reference, row = bench_opencv(pairs, args.cores)
            results[(width, height)] = [row, reference, pairs]
    if args.save_pairs:
        arrays = {"sizes": json.dumps(list(results)), "rows": json.dumps([r[0] for r in results.values()])}
        for k, (_, reference, pairs) in enumerate(results.values()):
            arrays[f"flows{k}"], arrays[f"a{k}"], arrays[f"b{k}"] = reference, *zip(*pairs, strict=True)
        np.savez_compressed(args.save_pairs, **arrays)
        return
    if args.one_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before JAX starts its threads
    for (width, height), (row, reference, pairs) in results.items():
        print(json.dumps({"size": f"{width}x{height}", **row}), flush=True)
        rates = {
            f"opencv, {k.removeprefix('pairs_per_s_')}": v for k, v in row.items() if k.startswith("pairs")
        }
        for batch in args.batch:
            ours = bench_ours(pairs, batch, args.repeats, reference)
            print(json.dumps({"size": f"{width}x{height}", **ours, "one_core": args.one_core}), flush=True)
            rates[f"jax, {ours['device']}, batch {batch}"] = ours["pairs_per_s"]
        if (width, height) == (320, 240):
            projection = {
                name: {f"{data}_hours": round(n / rate / 3600, 1) for data, n in PAIRS.items()}
                for name, rate in rates.items()
            }
            print(json.dumps({"projection_at_320x240": projection}), flush=True)


if __name__ == "__main__":
    main()
