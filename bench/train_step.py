"""Times the train steps on whatever devices are present, with random uint8 clips (no TensorFlow).

    python bench/train_step.py --batch 64                      # paper size, all three steps
    python bench/train_step.py --batch 8 --frames 16 --size 64 --width 0.25 --queue 64   # CPU

Steps: `init` (InfoNCE + LTCL, S segments), `cotrain` (L_RF + LTCL with the frozen other view,
queue already full so every step updates) and `moco` (InfoNCE alone: the plain MoCo step that the
PyTorch reference in ../shared/bench times). Prints one JSON line per (step, batch): clips/s,
step time, compile time, peak memory, XLA's FLOP count of the step and the achieved TFLOP/s
(fraction of peak when --peak_tflops is given).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvtcl_jax import optim  # noqa: E402
from cvtcl_jax.data.clip_spec import ClipSpec  # noqa: E402
from cvtcl_jax.data.random_batches import random_pretrain_batch  # noqa: E402
from cvtcl_jax.models import ContrastiveEncoder  # noqa: E402
from cvtcl_jax.sharding import check_global_batch, make_mesh, shard_batch, state_sharding  # noqa: E402
from cvtcl_jax.state import FrozenEncoder, create_train_state  # noqa: E402
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step  # noqa: E402


def synthetic_batch(rng, args, batch, cotrain):
    """Random uint8 clips with the input pipeline's shapes (normalised on the device, as in training)."""
    spec = ClipSpec(args.frames, args.size, args.segments, args.seg_len)
    out = random_pretrain_batch(rng, batch, spec, cotrain)
    out.pop("padded")  # a host-side statistic, never sent to the step
    return out


def peak_memory_gib(device) -> float:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # host RSS, KiB -> GiB


def bench(args, stage: str, batch: int) -> dict:
    mesh = make_mesh()
    check_global_batch(batch, mesh)
    model = ContrastiveEncoder(
        width_multiplier=args.width,
        num_mixed_4=args.num_mixed_4,
        bn_group_size=min(args.bn_group, batch),
        dtype=jnp.dtype(args.dtype),
    )
    cfg = ContrastConfig(beta=0.0 if stage == "moco" else 1.0)
    schedule = optim.step_decay_schedule(1e-3, 100)
    optimizer = optim.adam_l2(schedule, 1e-4)
    cotrain = stage == "cotrain"

    def init(rng):
        clip = (args.frames, args.size, args.size, 3)
        state = create_train_state(model, optimizer, rng, clip, args.queue, batch)
        if cotrain:  # a full queue: every timed step mines and updates
            state = state.replace(queue=state.queue.replace(fill=jnp.int32(args.queue)))
        return state

    shapes = jax.eval_shape(init, jax.random.key(0))
    state = jax.jit(init, out_shardings=state_sharding(mesh, shapes))(jax.random.key(0))
    step = jit_train_step(
        make_train_step(model, cfg, optimizer, schedule, other_model=model if cotrain else None),
        mesh,
        shapes,
        cotrain=cotrain,
    )
    extra = (jax.tree.map(jnp.copy, FrozenEncoder.from_state(state)),) if cotrain else ()
    data = shard_batch(mesh, synthetic_batch(np.random.default_rng(0), args, batch, cotrain))

    t0 = time.perf_counter()
    compiled = step.lower(state, data, *extra).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    for _ in range(args.warmup):
        state, metrics = compiled(state, data, *extra)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, data, *extra)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / args.steps

    result = {
        "step": stage,
        "batch": batch,
        "dtype": args.dtype,
        "clip": f"{args.frames}x{args.size}x{args.size}",
        "segments": f"{args.segments}x{args.seg_len}" if cfg.use_ltcl else None,
        "queue": args.queue,
        "width": args.width,
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "step_s": round(step_s, 4),
        "clips_per_s": round(batch / step_s, 2),
        "compile_s": round(compile_s, 1),
        "peak_mem_gib": round(peak_memory_gib(jax.devices()[0]), 2),
        "step_gflop": round(flops / 1e9, 1),
        "achieved_tflops": round(flops / step_s / 1e12, 3),
        "loss": float(metrics["loss"]),
    }
    if args.peak_tflops:
        result["fraction_of_peak"] = round(result["achieved_tflops"] / args.peak_tflops, 4)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument(
        "--stage", nargs="+", default=["init", "cotrain", "moco"], choices=["init", "cotrain", "moco"]
    )
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--seg_len", type=int, default=8)
    p.add_argument("--queue", type=int, default=2048)
    p.add_argument("--width", type=float, default=1.0, help="S3D width multiplier (1.0 = real network)")
    p.add_argument("--num_mixed_4", type=int, default=5)
    p.add_argument("--bn_group", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak, for the fraction")
    args = p.parse_args()
    for stage in args.stage:
        for batch in args.batch:
            print(json.dumps(bench(args, stage, batch)), flush=True)


if __name__ == "__main__":
    main()
