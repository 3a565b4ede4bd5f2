# Shared by the GPU session scripts (source it): the pinned pure-Python wheels the device
# image lacks or has in other versions (it has jax 0.11.2 and torch 2.11 with CUDA), and the data.
#   gpu_prepare            here, before the device call: wheels into .whl/, CIFAR-10 into .gpu/ (both git-ignored)
#   gpu_prepare_if_asked   a session script's `prepare` argument: gpu_prepare, then exit
#   gpu_install            there, first thing: install .whl/ into /tmp/site, put CIFAR-10 where record.json says
#   gpu_run NAME CMD...    CMD with its output in $L/NAME.log, its status and time appended to $L/times.txt
#   gpu_wait_with_budget   wait for the background runs, stopping them at a time budget
GPU_WHEELS="flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92 ml_collections==1.1.0 torchattacks==3.5.1"

# The clock of el() (seconds since START): starts when this file is sourced unless the caller set START.
START=${START:-$(date +%s)}
el() { echo $(( $(date +%s) - START )); }

gpu_prepare() {
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
  mkdir -p .whl .gpu
  for p in $GPU_WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$p" || return 1
  done
  cp ../shared/data/cifar10.tar.gz .gpu/
}

# gpu_prepare_if_asked "$@": a session script's `prepare` argument (gpu_prepare here, then exit).
gpu_prepare_if_asked() {
  if [ "${1:-}" = prepare ]; then set -e; gpu_prepare; du -sh .whl .gpu; exit 0; fi
}

gpu_install() {
  # Once per device call: a wrapper that installed already (gpu_session.sh) exports GPU_INSTALLED.
  if [ -n "${GPU_INSTALLED:-}" ]; then return 0; fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site:$PWD
  if [ -f .gpu/cifar10.tar.gz ]; then mkdir -p ../shared/data && cp .gpu/cifar10.tar.gz ../shared/data/; fi
}

# gpu_run NAME COMMAND...: runs COMMAND (usually with & after it) with stdout and stderr in $L/NAME.log,
# then appends "NAME rc=... took=...s end=...s" to $L/times.txt. With GPU_SKIP_COMPLETE=1, a run
# directory $R/NAME whose record.json says complete (one that came back finished from an earlier
# call and was unpacked to resume) is not run again.
gpu_run() {
  local name=$1; shift; local s=$(date +%s)
  if [ "${GPU_SKIP_COMPLETE:-0}" = 1 ] && grep -q '"status": "complete"' "$R/$name/record.json" 2>/dev/null; then
    echo "$name already complete" >> $L/times.txt; return 0
  fi
  "$@" > $L/$name.log 2>&1; echo "$name rc=$? took=$(( $(date +%s)-s ))s end=$(el)s" >> $L/times.txt
}

# Waits for the background jobs of the calling shell, sending SIGINT at $1 seconds to every
# process whose command line matches $2 (a cell checkpoints and stops), then KILL 30 s later;
# appends when the budget was reached to $3 (a times file).
gpu_wait_with_budget() {
  local budget=$1 pattern=$2 times=$3
  # The watchdog's sleeps are its own children, killed with it (trap), and write nowhere: an orphaned
  # sleep holding the caller's stdout kept a call that finished early running until the budget.
  ( s=; trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep "$budget" & s=$!; wait $s
    echo "budget reached at $(el)s" >> "$times"; pkill -INT -f "$pattern"
    sleep 30 & s=$!; wait $s; pkill -KILL -f "$pattern" ) >/dev/null 2>&1 &
  local killer=$!
  for p in $(jobs -p); do [ "$p" = "$killer" ] || wait "$p"; done
  kill $killer 2>/dev/null
}

# One line per record.json given: its run directory's name, status, backend,
# C-Acc and ASR.
gpu_print_records() {
  for f in "$@"; do
    [ -f "$f" ] || continue  # an unmatched glob: nothing finished
    $PY -c "import json,sys; r=json.load(open(sys.argv[1])); m=r.get('metrics',{}); print(sys.argv[1].split('/')[-2], r.get('status'), r.get('versions',{}).get('backend'), m.get('test_acc'), m.get('asr'))" "$f"
  done
}
