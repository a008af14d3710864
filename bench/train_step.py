"""Times the train steps on whatever devices are present, with random uint8 clips (no TensorFlow).

    python bench/train_step.py --batch 64                      # paper size, all three steps
    python bench/train_step.py --batch 8 --frames 16 --size 64 --width 0.25 --queue 64   # CPU
    python bench/train_step.py --stage init --batch 128 --profile /tmp/prof   # + top ops
    python bench/train_step.py --stage init --batch 128 256 --fit_gib 78 --fit_only   # largest batch

Steps: `init` (InfoNCE + LTCL, S segments), `cotrain` (L_RF + LTCL with the frozen other view,
queue already full so every step updates) and `moco` (InfoNCE alone: the plain MoCo step that the
PyTorch reference in ../shared/bench times). Prints one JSON line per (step, batch): clips/s,
step time, compile time, peak memory (measured, and XLA's buffer assignment of the compiled
step), XLA's FLOP count of the step and the achieved TFLOP/s (fraction of peak when --peak_tflops
is given).

--profile DIR traces a few more steps with `jax.profiler` (viewable in TensorBoard's profile
tab or Perfetto), saves the step's optimised HLO and prints the top ops and the time per kind of
op (bench/profile_ops.py). --fit_gib G finds the largest batch (a multiple of the BN group) whose
compiled step needs at most G GiB per device, by compiling (not running) the step from shapes:
guesses on a line through the two largest --batch values without XLA's GPU autotuning, the answer
with it unless --fit_no_check (fit_batch); --fit_only skips the timing. Several --pool_grad and
--conv_lowering values run in one process, every pair (later compiles reuse the GPU autotuning of
shared convolutions);
--autotune_level 0 compiles the timed steps without autotuning. --on_device none color resize times
the step with each setting's device part of the augmentations (`data.aug.on_device`: a small
program run on each batch before the step; 'resize' feeds whole 171x128 frames with their crop
windows): the step is compiled once (every setting feeds it the same shapes), and each line also
gives that program alone per batch (`augment_ms`) and the batch's MB as shipped and as fed.
--augment_only times the device part alone, no step compiled (seconds, not minutes, on a GPU);
with --profile it traces that program and prints its top ops.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import profile_ops  # noqa: E402
from cvtcl_jax import optim  # noqa: E402
from cvtcl_jax.data import device_augment  # noqa: E402
from cvtcl_jax.data.clip_spec import ClipSpec  # noqa: E402
from cvtcl_jax.data.random_batches import random_pretrain_batch  # noqa: E402
from cvtcl_jax.models import ContrastiveEncoder  # noqa: E402
from cvtcl_jax.models.conv import CONV_LOWERINGS  # noqa: E402
from cvtcl_jax.models.pooling import DEFAULT_POOL_GRAD, POOL_GRADS  # noqa: E402
from cvtcl_jax.sharding import check_global_batch, copied, make_mesh, shard_batch  # noqa: E402
from cvtcl_jax.state import FrozenEncoder, create_train_state, state_sharding  # noqa: E402
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step  # noqa: E402

# docs/method.md §5's blur taps (AugmentConfig's default; augment.py needs TensorFlow, which GPU
# hosts may lack).
BLUR_KERNEL_SIZE = 13


def synthetic_batch(rng, args, batch, cotrain, on_device="none"):
    """Random uint8 clips with the input pipeline's shapes (normalised on the device, as in training)
    as `on_device` ships them (data.aug.on_device)."""
    spec = ClipSpec(args.frames, args.size, args.segments, args.seg_len)
    out = random_pretrain_batch(rng, batch, spec, cotrain, on_device=on_device)
    out.pop("padded")  # a host-side statistic, never sent to the step
    return out


def peak_memory_gib(device) -> float:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # host RSS, KiB -> GiB


def xla_memory_gib(compiled) -> float | None:
    """Device memory XLA assigned to the compiled step (arguments + outputs + temporaries - aliased
    donations), per device; None where the backend does not say."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return total / 2**30


def _lower(args, stage: str, batch: int, queue: int):
    """(lowered step, mesh, state init function, state shapes, FLOP counter) for one step kind and
    batch, lowered from shapes alone (nothing on the devices yet), for the batch as the step
    receives it (every data.aug.on_device setting gives the same)."""
    mesh = make_mesh()
    check_global_batch(batch, mesh)
    model = ContrastiveEncoder(
        width_multiplier=args.width,
        num_mixed_3=args.num_mixed_3,
        num_mixed_4=args.num_mixed_4,
        num_mixed_5=args.num_mixed_5,
        bn_group_size=min(args.bn_group, batch),
        dtype=jnp.dtype(args.dtype),
        remat=args.remat,
        pool_grad=args.pool_grad,
        conv_lowering=args.conv_lowering,
    )
    cfg = ContrastConfig(beta=0.0 if stage == "moco" else 1.0)
    schedule = optim.step_decay_schedule(1e-3, 100)
    optimizer = optim.adam_l2(schedule, 1e-4)
    cotrain = stage == "cotrain"

    def init(rng):
        clip = (args.frames, args.size, args.size, 3)
        state = create_train_state(model, optimizer, rng, clip, queue, batch)
        if cotrain:  # a full queue: every timed step mines and updates
            state = state.replace(queue=state.queue.replace(fill=jnp.int32(queue)))
        return state

    shapes = jax.eval_shape(init, jax.random.key(0))
    raw_step = make_train_step(model, cfg, optimizer, schedule, other_model=model if cotrain else None)
    step = jit_train_step(raw_step, mesh, shapes, cotrain=cotrain)
    one = synthetic_batch(np.random.default_rng(0), args, 1, cotrain)
    fed = {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for k, v in one.items()}
    extra = jax.eval_shape(_frozen, shapes) if cotrain else ()
    count = functools.partial(step_flops, raw_step, shapes, fed, *extra)
    return step.lower(shapes, fed, *extra), mesh, init, shapes, count


def _frozen(state):
    """The co-training step's extra argument: the other view's frozen encoder."""
    return (copied(FrozenEncoder.from_state(state)),)


def compile_step(args, stage: str, batch: int, queue: int | None = None):
    """(compiled step, compile seconds, state, extra args, FLOP counter) for one step kind and
    batch, with its state on the devices.

    queue: queue length (default args.queue; it must be a multiple of the batch)."""
    t0 = time.perf_counter()
    lowered, mesh, init, shapes, count = _lower(args, stage, batch, queue or args.queue)
    compiled = lowered.compile(compiler_options=_gpu_options(mesh, args.autotune_level))
    compile_s = time.perf_counter() - t0
    state = jax.jit(init, out_shardings=state_sharding(mesh, shapes))(jax.random.key(0))
    extra = _frozen(state) if stage == "cotrain" else ()
    return compiled, compile_s, state, extra, count


def feeds(args, stage: str, batch: int):
    """Yields, for each --on_device value in turn, (on_device, the batch on the devices as that
    setting ships it, its device program, {the program's time alone per batch, the batch's MB as
    shipped and as fed}); the program is compiled here, outside every timing."""
    mesh = make_mesh()
    check_global_batch(batch, mesh)
    feed = device_augment.make_batch_augmenter(mesh, BLUR_KERNEL_SIZE, args.size)
    for on_device in args.on_device:
        data = synthetic_batch(np.random.default_rng(0), args, batch, stage == "cotrain", on_device)
        data = shard_batch(mesh, data)
        fed = jax.block_until_ready(feed(data))  # the compile
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fed = feed(data)
        jax.block_until_ready(fed)
        augment_s = (time.perf_counter() - t0) / args.steps
        row = {
            "augment_ms": round(augment_s * 1e3, 2) if on_device != "none" else 0.0,
            "batch_mb_shipped": round(_megabytes(data), 1),
            "batch_mb_fed": round(_megabytes(fed), 1),
        }
        del fed
        yield on_device, data, feed, row


def _megabytes(batch: dict) -> float:
    return sum(v.nbytes for v in batch.values()) / 2**20


def step_memory_gib(args, stage: str, batch: int, queue: int, autotune: bool = True) -> float | None:
    """XLA's device memory for the step at `batch` (xla_memory_gib), compiled from shapes alone:
    nothing is put on the devices, so batches far beyond the memory can be tried.

    autotune=False compiles without XLA's GPU autotuning of the convolutions, presumed to be most
    of the 2-4 minutes a step takes to compile on an H200 (not borne out so far: a fit compiled
    this way did not finish within 240 s there). It should change only the convolutions' scratch
    space, with the algorithms autotuning would pick, so fit_batch checks its answer with
    autotuning unless --fit_no_check."""
    lowered, mesh, *_ = _lower(args, stage, batch, queue)
    return xla_memory_gib(lowered.compile(compiler_options=_gpu_options(mesh, None if autotune else 0)))


def _gpu_options(mesh, autotune_level: int | None) -> dict | None:
    """Compiler options setting XLA's GPU autotuning level (0: none, the library's heuristics pick
    each convolution's algorithm; XLA's default is 4); None (XLA's default) elsewhere."""
    if autotune_level is None or mesh.devices.flat[0].platform != "gpu":
        return None
    return {"xla_gpu_autotune_level": autotune_level}


def step_flops(step, *shapes) -> float:
    """FLOPs of one step from XLA's cost analysis of its HLO before optimisation, lowered for the
    CPU: the count depends on the HLO alone, and the compiled program's own analysis misses work
    handed to libraries (on a GPU the cuDNN convolutions are custom calls it does not count: it gave
    5.7 GFLOP per clip for the MoCo step, about a fifteenth of the real cost), while lowering for a
    GPU gave no count at all with jax 0.11's CUDA plugin (0.0 in the H200 run of 2026-11-27).

    step: the step function before jit; shapes: its arguments' shapes (ShapeDtypeStructs). 0.0,
    with a warning, where no count comes back: a GPU run's timings must not be lost to it."""
    try:
        with jax.default_device(jax.devices("cpu")[0]):
            cost = jax.jit(step).lower(*shapes).cost_analysis()
    except Exception as e:  # the count is an extra: the timing goes on without it
        print(f"warning: no FLOP count ({type(e).__name__}: {e})", file=sys.stderr)
        return 0.0
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _config(args, stage: str, batch: int) -> dict:
    """The settings a result line names."""
    return {
        "step": stage,
        "batch": batch,
        "dtype": args.dtype,
        "clip": f"{args.frames}x{args.size}x{args.size}",
        "segments": f"{args.segments}x{args.seg_len}" if stage != "moco" else None,
        "queue": args.queue,
        "width": args.width,
        "remat": args.remat,
        "pool_grad": args.pool_grad,
        "conv_lowering": args.conv_lowering,
        "autotune_level": args.autotune_level,
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
    }


def bench_augment(args, stage: str, batch: int) -> None:
    """Prints (one JSON line per --on_device value) the device part of the augmentations alone;
    with --profile, traces it and prints its top ops."""
    for on_device, data, feed, row in feeds(args, stage, batch):
        line = {**_config(args, stage, batch), "on_device": on_device, **row}
        line["augment_ms_per_sample"] = round(row["augment_ms"] / batch, 3)
        print(json.dumps(line), flush=True)
        if args.profile and on_device != "none":
            out = Path(args.profile) / f"augment_{stage}_{on_device}_b{batch}"
            hlo = feed.program.lower(data).compile().as_text()  # for the ops' JAX names
            with jax.profiler.trace(str(out)):
                t0 = time.perf_counter()
                jax.block_until_ready([feed(data) for _ in range(args.profile_steps)])
                wall_s = time.perf_counter() - t0
            summary = profile_ops.summarize(out, hlo, top=args.profile_top, wall_s=wall_s)
            print(f"== {out.name}: top ops of {args.profile_steps} runs\n{summary}", file=sys.stderr)


def bench(args, stage: str, batch: int) -> None:
    """Compiles one (step, batch) and times it after each --on_device setting's device program (one
    JSON line each); then traces it (after the first setting) with --profile."""
    compiled, compile_s, state, extra, count = compile_step(args, stage, batch)
    flops = count()
    xla_mem = xla_memory_gib(compiled)
    # One compiled step serves every setting: each feeds it the same shapes (it would refuse others).
    for i, (on_device, data, feed, row) in enumerate(feeds(args, stage, batch)):
        for _ in range(args.warmup):
            state, metrics = compiled(state, feed(data), *extra)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, feed(data), *extra)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - t0) / args.steps
        result = {
            **_config(args, stage, batch),
            "on_device": on_device,
            "step_s": round(step_s, 4),
            "clips_per_s": round(batch / step_s, 2),
            "compile_s": round(compile_s, 1) if i == 0 else 0.0,
            "peak_mem_gib": round(peak_memory_gib(jax.devices()[0]), 2),
            "xla_mem_gib": None if xla_mem is None else round(xla_mem, 4),
            "step_gflop": round(flops / 1e9, 1),
            "achieved_tflops": round(flops / step_s / 1e12, 3),
            "loss": float(metrics["loss"]),
            **row,
        }
        if args.peak_tflops:
            result["fraction_of_peak"] = round(result["achieved_tflops"] / args.peak_tflops, 4)
        # Printed before the profile, so a run stopped while tracing still reports its timing.
        print(json.dumps(result), flush=True)
        if args.profile and i == 0:
            defaults = (args.conv_lowering, "fold"), (args.pool_grad, DEFAULT_POOL_GRAD)
            variant = "".join(f"_{v}" for v, default in defaults if v != default)
            name = f"{stage}_b{batch}_{args.dtype}{variant}"
            state = profile(args, name, compiled, state, feed, data, extra)


def profile(args, name: str, compiled, state, feed, data, extra):
    """Traces args.profile_steps steps into args.profile/name and prints the top ops (stderr);
    returns the state after them (the step donates the one it is given)."""
    out = Path(args.profile) / name
    out.mkdir(parents=True, exist_ok=True)
    hlo = compiled.as_text()
    (out / "step.hlo.txt").write_text(hlo)
    with jax.profiler.trace(str(out)):
        t0 = time.perf_counter()
        for _ in range(args.profile_steps):
            state, metrics = compiled(state, feed(data), *extra)
        jax.block_until_ready(metrics)
        wall_s = time.perf_counter() - t0
    summary = profile_ops.summarize(out, hlo, top=args.profile_top, wall_s=wall_s)
    (out / "top_ops.txt").write_text(summary + "\n")
    print(f"== {name}: top ops of {args.profile_steps} traced steps ({out})\n{summary}", file=sys.stderr)
    return state


def fit_batch(args, stage: str) -> dict:
    """The largest batch (multiple of the BN group) whose step needs <= args.fit_gib GiB per device.

    Memory is close to linear in the batch: a line through the two largest --batch values gives a
    guess, each guess is compiled (from shapes, without autotuning, presumed much cheaper; see
    step_memory_gib) and the line redrawn through the last two points until a guess repeats; the
    next batch up is compiled to bracket the answer. The answer is then compiled once more with
    autotuning, the program training would run, and stepped down if that one does not fit. The queue
    is rounded up to a multiple of each batch tried (its memory is negligible)."""
    group = max(args.bn_group, jax.device_count())
    points = {}  # batch -> GiB without autotuning
    seconds = {}  # "batch" or "batch autotuned" -> seconds to lower and compile

    def memory(batch, autotune=False):
        t0 = time.perf_counter()
        gib = step_memory_gib(args, stage, batch, -(-args.queue // batch) * batch, autotune)
        key = f"{batch}{' autotuned' if autotune else ''}"
        seconds[key] = round(time.perf_counter() - t0, 1)
        # On stderr as it goes: a run stopped at its time limit still shows what it compiled.
        print(
            f"fit {stage}: batch {key}: {gib} GiB, compiled in {seconds[key]} s", file=sys.stderr, flush=True
        )
        if gib is None:
            raise SystemExit("--fit_gib needs XLA's memory_analysis, which this backend lacks")
        return gib

    def largest_fit():
        return max((b for b, m in points.items() if m <= args.fit_gib), default=None)

    last = sorted(set(args.batch))[-2:]
    if len(last) < 2:
        raise SystemExit("--fit_gib needs two different batches to draw its line (--batch A B)")
    for b in last:
        points[b] = memory(b)
    for _ in range(5):
        (b0, m0), (b1, m1) = sorted((b, points[b]) for b in last)
        slope = max(m1 - m0, 1e-9) / (b1 - b0)
        guess = max(group, int((args.fit_gib - m1) / slope + b1) // group * group)
        if guess in points:
            break
        points[guess] = memory(guess)
        last = [last[-1], guess]
    for _ in range(3):  # bracket the answer: the next batch up must not fit
        largest = largest_fit()
        if largest is None or largest + group in points:
            break
        points[largest + group] = memory(largest + group)
    largest, autotuned = largest_fit(), {}
    for _ in range(0 if args.fit_no_check else 2):
        # The answer with autotuning; a group down if its scratch space tips it over.
        if largest is None:
            break
        autotuned[largest] = memory(largest, autotune=True)
        if autotuned[largest] <= args.fit_gib:
            break
        largest = largest - group if largest > group else None
    if args.fit_no_check:
        autotuned = None
    elif largest not in autotuned:  # none fitted, or the second step down is not checked
        largest = None
    mem = points if autotuned is None else autotuned
    tried = {**points, **(autotuned or {})}
    over = [b for b, m in tried.items() if m > args.fit_gib and (largest is None or b > largest)]
    return {
        "step": stage,
        "dtype": args.dtype,
        "remat": args.remat,
        "fit_gib": args.fit_gib,
        "largest_batch": largest,
        "xla_mem_gib": None if largest is None else round(mem[largest], 2),
        "smallest_batch_over": min(over) if over else None,
        "batches_compiled": {b: round(m, 3) for b, m in sorted(points.items())},
        "autotuned_check": None if autotuned is None else {b: round(m, 3) for b, m in autotuned.items()},
        "compile_s": seconds,
    }


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
    p.add_argument("--num_mixed_3", type=int, default=2, help="Mixed_3 blocks kept (2 = real network)")
    p.add_argument("--num_mixed_4", type=int, default=5, help="Mixed_4 blocks kept (5 = real network)")
    p.add_argument("--num_mixed_5", type=int, default=2, help="Mixed_5 blocks kept (2 = real network)")
    p.add_argument("--bn_group", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak, for the fraction")
    p.add_argument("--remat", action="store_true", help="recompute activations in the backward pass")
    p.add_argument(
        "--pool_grad",
        nargs="+",
        default=[DEFAULT_POOL_GRAD],
        choices=list(POOL_GRADS),
        help="S3D.pool_grad; several run in one process, where later compiles reuse XLA's autotuning "
        "of the convolutions they share (on an H200 the co-training step compiled in 68 s after the "
        "init step, against 217 s for the init step first)",
    )
    p.add_argument(
        "--conv_lowering",
        nargs="+",
        default=["fold"],
        choices=list(CONV_LOWERINGS),
        help="S3D.conv_lowering; several run in one process, like --pool_grad (every pair of the two)",
    )
    p.add_argument(
        "--on_device",
        nargs="+",
        default=["none"],
        choices=device_augment.ON_DEVICE,
        help="augment each batch on the device first, as data.aug.on_device does; several: the same "
        "compiled step timed after each",
    )
    p.add_argument("--augment_only", action="store_true", help="time the --on_device programs alone, no step")
    p.add_argument(
        "--autotune_level",
        type=int,
        help="XLA's GPU autotuning level for the timed steps (0: none; default: XLA's own, 4)",
    )
    p.add_argument("--profile", help="trace steps into this directory and print the top ops")
    p.add_argument("--profile_steps", type=int, default=3)
    p.add_argument("--profile_top", type=int, default=15)
    p.add_argument("--fit_gib", type=float, help="also find the largest batch that fits this many GiB")
    p.add_argument("--fit_only", action="store_true", help="with --fit_gib: no timing, only the fit")
    p.add_argument(
        "--fit_no_check",
        action="store_true",
        help="with --fit_gib: skip the autotuned compile of the answer (a full compile); its memory is "
        "then the heuristic algorithms' (an --autotune_level 0 run beside a default one at one batch "
        "shows how far apart the two are)",
    )
    args = p.parse_args()
    if args.fit_only and not args.fit_gib:
        p.error("--fit_only needs --fit_gib")
    if args.augment_only and args.fit_gib:
        p.error("--augment_only compiles no step: it takes no --fit_gib")
    for lowering, pool_grad in itertools.product(args.conv_lowering, args.pool_grad):
        args.conv_lowering, args.pool_grad = lowering, pool_grad  # what _lower and the result line read
        for stage in args.stage:
            if not args.fit_only:
                for batch in args.batch:
                    (bench_augment if args.augment_only else bench)(args, stage, batch)
            if args.fit_gib:
                print(json.dumps(fit_batch(args, stage)), flush=True)


if __name__ == "__main__":
    main()
