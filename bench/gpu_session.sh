#!/usr/bin/env bash
# The performance measurements of one GPU session, most important first, inside one time budget:
# each run is bounded by its own limit and by what is left of BUDGET_S (default 540 s), so an
# overrun or failure keeps the results before it. Everything lands in $OUT (default ./gpu_out):
# results.jsonl (one JSON line per measurement), a log per run, session.log, the top-ops tables.
#
#   bash bench/gpu_session.sh [REF_DIR]
#
# REF_DIR holds the PyTorch reference (torch_one.py and anchor_gpu.py of ../shared/bench); a remote
# GPU machine cannot see ../shared, so copy them into an ignored folder of the checkout (e.g. .ref/)
# and send that along. Without it the reference is skipped. PEAK_TFLOPS (default 790, the dense
# bf16 figure the performance issue uses for the H100/H200) gives the fraction of peak.
# BENCH_ARGS is appended to every bench/train_step.py command (a dry run on a CPU, say:
# BENCH_ARGS="--frames 8 --size 32 --width 0.125 --num_mixed_4 1 --queue 256 --bn_group 8").
set -uo pipefail
cd "$(dirname "$0")/.."
REF=${1:-}
OUT=${OUT:-gpu_out}
PEAK=${PEAK_TFLOPS:-790}
DEADLINE=$((SECONDS + ${BUDGET_S:-540}))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEP="python3 bench/train_step.py --peak_tflops $PEAK"

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
    if [ "$rc" -ne 0 ]; then
        log "$name: exit $rc (124: stopped at ${limit}s)"
        tail -5 "$OUT/$name.log"
    fi
}

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 |
    tee -a "$OUT/session.log"

# 1. The paper's configuration (32x128x128, S = 4 x 8, queue 2048) at batch 128, bf16, all three
#    steps, with the PyTorch reference's MoCo step in the same call.
if [ -n "$REF" ] && [ -f "$REF/torch_one.py" ]; then
    run 120 torch_b128 python3 "$REF/torch_one.py" 128
fi
run 240 bf16_b128 $STEP --dtype bfloat16 --batch 128 --stage moco init cotrain
# 2. Where the init step's time goes: top ops and time per kind of op.
run 120 profile_init $STEP --dtype bfloat16 --batch 128 --stage init --steps 3 --profile "$OUT/prof"
cp "$OUT"/prof/*/top_ops.txt "$OUT/" 2>/dev/null
# 3. float32 beside it, then the largest init-step batch that fits an 80 GB card (78 GiB usable),
#    without and with remat (compiled, not run, beyond the two measured batches).
run 150 f32_b128 $STEP --dtype float32 --batch 128 --stage init moco
run 150 fit_80g $STEP --dtype bfloat16 --batch 64 128 --stage init --steps 1 --warmup 1 --fit_gib 78
run 150 fit_80g_remat $STEP --dtype bfloat16 --batch 64 128 --stage init --steps 1 --warmup 1 --fit_gib 78 --remat
# 4. The rest of the batch sweep.
run 200 bf16_sweep $STEP --dtype bfloat16 --batch 32 256 --stage init cotrain
log "done, $((DEADLINE - SECONDS))s of the budget left"
