#!/usr/bin/env bash
# The performance measurements of one GPU session, most important first, inside one time budget:
# each run is bounded by its own limit and by what is left of BUDGET_S (default 540 s), so an
# overrun or failure keeps the results before it. Everything lands in $OUT (default ./gpu_out):
# results.jsonl (one JSON line per measurement), a log per run, session.log, the top-ops tables.
#
#   bash bench/gpu_session.sh [REF_DIR]
#
# REF_DIR holds the PyTorch reference (torch_one.py and anchor_gpu.py; bench/reference/ by default,
# an empty string skips it). PEAK_TFLOPS (default 790, the dense
# bf16 figure the performance issue uses for the H100/H200) gives the fraction of peak.
# BENCH_ARGS is appended to every bench/train_step.py command (a dry run on a CPU, say:
# BENCH_ARGS="--frames 8 --size 32 --width 0.125 --num_mixed_4 1 --queue 256 --bn_group 8").
# PHASES runs some of the groups, in the order given: augment (the device part of the
# augmentations alone, data.aug.on_device 'color' and 'resize', both modes: no step compiled),
# headline (the reference and our three steps at batch 128, bf16, each traced), colour (the init
# and co-training steps after each on_device setting, one compile each), fit (the largest batch
# for 80 GB), variants (the init step with the other conv lowering and pooling gradient), f32,
# sweep (batches 32 and 256), fit_remat, fit_nocheck (fit without compiling its answer with
# autotuning), noautotune (the headline's steps compiled without XLA's autotuning: compile time
# and speed beside the headline's), tvl1 (our TV-L1's pairs/s against OpenCV's rates measured
# where the pairs were prepared). HEADLINE_STAGES (default "init moco cotrain") picks the
# headline's steps, HEADLINE_POOL (default "separable_slices") its S3D.pool_grad values and
# HEADLINE_LOWERING (default "fold") its S3D.conv_lowering values (e.g. "fold fold_s2d"), every
# combination in one process: a later step program reuses the autotuning of the convolutions it
# shares with an earlier one; HEADLINE_ON_DEVICE (default "none") the data.aug.on_device settings
# each compiled step is timed after; HEADLINE_PROFILE=0 skips the traces. PACK=1 packs $OUT into
# two archives at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
REF=${1-bench/reference}
OUT=${OUT:-gpu_out}
PEAK=${PEAK_TFLOPS:-790}
DEADLINE=$((SECONDS + ${BUDGET_S:-540}))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEP="python3 bench/train_step.py --peak_tflops $PEAK"
HEADLINE_STAGES=${HEADLINE_STAGES:-init moco cotrain}
HEADLINE_POOL=${HEADLINE_POOL:-separable_slices}
HEADLINE_LOWERING=${HEADLINE_LOWERING:-fold}
HEADLINE_ON_DEVICE=${HEADLINE_ON_DEVICE:-none}
[ "${HEADLINE_PROFILE:-1}" = 0 ] && HEADLINE_TRACE=() || HEADLINE_TRACE=(--profile "$OUT/prof")
# One persistent compilation cache for the session: a program compiled by an earlier run (the
# headline's init step for the colour phase) is loaded, not compiled again. A run's compile_s is
# therefore a cache load where an earlier run compiled the same program.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/cvtcl_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# Batch 256 of the init step needs more than JAX's default 75% of an 80 GB card.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}

log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

run() {  # run LIMIT_S NAME COMMAND...
    local limit=$1 name=$2 left=$((DEADLINE - SECONDS))
    shift 2
    if [ "$left" -lt 30 ]; then
        log "$name: skipped, ${left}s of the budget left"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    log "$name (at most ${limit}s): $*"
    [ "$1" != python3 ] || [ "$2" != bench/train_step.py ] || set -- "$@" ${BENCH_ARGS:-}
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep '^{' "$OUT/$name.log" | tee -a "$OUT/results.jsonl"
    if [ "$rc" -eq 124 ]; then
        log "$name: stopped at its ${limit}s limit"
        tail -5 "$OUT/$name.log"
    elif [ "$rc" -ne 0 ]; then
        log "$name: exit $rc"
        tail -5 "$OUT/$name.log"
    fi
}

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 |
    tee -a "$OUT/session.log"

# PHASES picks and orders the groups below (default: all, most important first). A step program
# took 115-120 s to compile on an H200 in one call and 217 s (the init step, first in its process)
# in another, the co-training step after it in the same process 68 s (2026-11-27; 215 s and over
# 130 s with the separable pooling gradient on 2026-12-04): presumably
# mostly XLA's autotuning of the convolutions, whose results a process keeps. So a run's limit is
# about 150-220 s for its first program and 90 s for each later one, and a 15-minute device
# session affords the reference and about four programs in one process.
for phase in ${PHASES:-augment headline colour fit variants f32 sweep fit_remat}; do
    case $phase in
    headline)  # The paper's configuration (32x128x128, S = 4 x 8, queue 2048) at batch 128, bf16,
        # all three steps, with the PyTorch reference's MoCo step in the same call; each step is
        # also traced (no extra compile) for its top ops.
        if [ -n "$REF" ] && [ -f "$REF/torch_one.py" ]; then
            run 120 torch_b128 python3 "$REF/torch_one.py" 128
        fi
        run 540 bf16_b128 $STEP --dtype bfloat16 --batch 128 --stage $HEADLINE_STAGES --pool_grad $HEADLINE_POOL --conv_lowering $HEADLINE_LOWERING --on_device $HEADLINE_ON_DEVICE "${HEADLINE_TRACE[@]}"
        for d in "$OUT"/prof/*/; do
            [ -f "$d/top_ops.txt" ] && cp "$d/top_ops.txt" "$OUT/top_ops_$(basename "$d").txt"
        done ;;
    augment)  # The device part of the augmentations alone (data.aug.on_device): resize, flip, colour
        # and uint8 rounding ('resize', the default), colour only ('color'); small programs.
        run 120 augment $STEP --batch 128 --stage init cotrain --on_device color resize --augment_only ;;
    colour)  # The steps as training runs them: one compile each (the headline's, a cache load after
        # it), timed after each on_device setting's device program.
        run 400 colour $STEP --dtype bfloat16 --batch 128 --stage init cotrain --on_device none color resize ;;
    variants)  # The init step with the 3D convolutions, and with XLA's own 3D pooling (the old default).
        run 200 init_xla3d $STEP --dtype bfloat16 --batch 128 --stage init --conv_lowering xla3d
        run 200 init_autodiff $STEP --dtype bfloat16 --batch 128 --stage init --pool_grad autodiff ;;
    f32)  # float32 beside bf16.
        run 320 f32_b128 $STEP --dtype float32 --batch 128 --stage init moco ;;
    sweep)  # The rest of the batch sweep.
        run 620 bf16_sweep $STEP --dtype bfloat16 --batch 32 256 --stage init cotrain ;;
    fit)  # The largest init-step batch that fits an 80 GB card (78 GiB usable): a line through
        # batches 128 and 256, each guess compiled from shapes without autotuning (not run) until
        # bracketed, then the answer compiled with autotuning (one full ~2-minute compile).
        run 330 fit_80g $STEP --dtype bfloat16 --batch 128 256 --stage init --fit_gib 78 --fit_only ;;
    noautotune)  # Autotuning is presumed to be most of the compile: if the library's heuristic
        # algorithms run about as fast, a session can afford many more programs.
        run 240 noautotune_b128 $STEP --dtype bfloat16 --batch 128 --stage $HEADLINE_STAGES --pool_grad $HEADLINE_POOL --conv_lowering $HEADLINE_LOWERING --autotune_level 0 ;;
    fit_nocheck)  # The fit without the autotuned compile of the answer (one full compile less): its
        # memory is the heuristic algorithms'; the noautotune phase's xla_mem_gib beside the
        # headline's shows how far autotuning moves it at batch 128.
        run 240 fit_80g_nocheck $STEP --dtype bfloat16 --batch 128 256 --stage init --fit_gib 78 --fit_only --fit_no_check ;;
    tvl1)  # Our JAX TV-L1 (data_prep's flow backend) on pairs prepared where OpenCV is
        # (TVL1_PAIRS, default $REF/tvl1_pairs.npz: bench/tvl1.py --save_pairs), batch sweep
        # (TVL1_BATCH), at most TVL1_LIMIT_S seconds (default 300).
        pairs=${TVL1_PAIRS:-$REF/tvl1_pairs.npz}
        if [ -f "$pairs" ]; then
            run ${TVL1_LIMIT_S:-300} tvl1 python3 bench/tvl1.py --load_pairs "$pairs" --batch ${TVL1_BATCH:-16 64 128}
        else
            log "tvl1: skipped, no $pairs"
        fi ;;
    fit_remat)  # The same with remat.
        run 330 fit_80g_remat $STEP --dtype bfloat16 --batch 128 256 --stage init --fit_gib 78 --fit_only --remat ;;
    *) log "unknown phase $phase" ;;
    esac
done
log "done, $((DEADLINE - SECONDS))s of the budget left"
# PACK=1: leave $OUT as results.jsonl, session.log and two archives (a GPU call brings back at
# most 8 files, 16 MB each): bundle.tgz (logs, top-ops tables, the steps' HLO) and traces.tgz.
if [ -n "${PACK:-}" ]; then
    (
        cd "$OUT" || exit
        find . -name '*.xplane.pb' | tar czf traces.tgz -T -
        tar czf bundle.tgz --warning=no-file-changed --exclude='*.xplane.pb' --exclude='*.trace.json.gz' --exclude=traces.tgz \
            --exclude=bundle.tgz --exclude=results.jsonl --exclude=session.log .
        find . -mindepth 1 -maxdepth 1 ! -name results.jsonl ! -name session.log ! -name '*.tgz' \
            -exec rm -rf {} +
        ls -l
    )
fi
