#!/bin/bash
# GPU benchmarks (issue 7) and the DHBE `paper` iteration time (issue 4), in one device-tool call.
# How it runs (device tool, H100/H200 image with jax 0.11.2 + torch 2.11 CUDA): from the repo root,
# with `.whl/` holding the pinned pure-Python wheels of gpu_setup.sh (`. experiments/scripts/gpu_setup.sh;
# gpu_prepare` here; the image lacks ml_collections and torchattacks). Each benchmark runs alone on the GPU (the timings alternate ours / PyTorch in
# one process); everything it prints lands in $OUT/bench.log. Results: docs/performance.md.
#   SMOKE=1 bash experiments/scripts/gpu_bench_session.sh   # the same sequence, tiny, on this CPU
set -u
OUT=${OUT:-/tmp/out_bench}; mkdir -p "$OUT"; LOG=$OUT/bench.log
. experiments/scripts/gpu_setup.sh
if [ -d .whl ] && [ "${SMOKE:-0}" = 0 ]; then gpu_install || exit 3; fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu; W1="0.125"; W2=""; B=8; REP="--repeats 1 --steps 1"; PAPER_ITS=0
else
  DEV=cuda; W1="1"; W2="0.25"; B=128; REP="--repeats 7 --steps 5"; PAPER_ITS=${PAPER_ITS:-60}
fi
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>/dev/null; nproc
  $PY -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__,
          'cudnn tf32', torch.backends.cudnn.allow_tf32, 'matmul tf32', torch.backends.cuda.matmul.allow_tf32)"
} >> "$LOG" 2>&1
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its output and its time
  local name=$1 limit=$2; shift 2; local s=$(date +%s)
  echo "== $name" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  echo "== $name rc=$? took=$(( $(date +%s) - s ))s at=$(el)s" >> "$LOG"
}
for w in $W1 $W2; do
  step "dhbe w$w" 150 $PY -m experiments.bench dhbe --vs torch --torch-device $DEV --widths $w --batch $B $REP
done
step "train" 120 $PY -m experiments.bench train --vs torch --torch-device $DEV --widths $W1 $W2 --batch $B $REP
step "pgd" 120 $PY -m experiments.bench pgd --vs torch --torch-device $DEV --widths $W1 $W2 --batch $B $REP
if [ "$PAPER_ITS" -gt 0 ]; then
  step "dhbe paper config" 120 $PY experiments/scripts/bench_dhbe_paper.py "$PAPER_ITS"
fi
grep -E "^(task=|== |#|backend|first|steady|jax|NVIDIA|name)" "$LOG"
