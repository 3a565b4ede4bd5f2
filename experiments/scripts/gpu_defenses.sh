#!/bin/bash
# One lent-GPU call that runs defense cells of the CIFAR-10 CPU matrix whose teachers are already
# trained (written 2026-11-29, session 26): each (attack, defense) cell exactly as `experiments.run
# --config experiments/configs/matrix_cifar10_cpu.py` runs it (same config file, the defense's
# `cpu` variant), one process per cell side by side on the GPU, each with its teacher copied from
# this machine. Only the cells' archive entries come back (record, history, cell.json: a few kB
# each, no model), to be merged into the repo's archive, which the CPU matrix and its table read:
# the defense cells left on the GPU-trained teachers cost ~8 h of the 2-core CPU.
# Each cell's record.json says where it ran (`versions.backend`).
#
#   bash experiments/scripts/gpu_defenses.sh prepare     # here: wheels, CIFAR-10, the teachers and
#                                                        # .gpu/cells.txt (the cells missing from the archive)
#   device run: command "bash experiments/scripts/gpu_defenses.sh", carry [".whl", ".gpu"], timeout_s 580
#   SMOKE=1 bash experiments/scripts/gpu_defenses.sh     # the same graph on the shipped MNIST subset, tiny
#   bash experiments/scripts/gpu_defenses.sh install DIR  # here: merge DIR/cells.tgz into the archive
#
# At BUDGET seconds every cell still running is sent SIGINT (it checkpoints and stops; only
# finished cells come back), then KILL 30 s later. Output: $OUT/cells.tgz and $OUT/logs.tgz.
set -u
. experiments/scripts/gpu_setup.sh
M=${M:-$HOME/runs/matrix_cifar10_cpu}              # the CPU matrix's out (its teachers/)
ARCHIVE=${ARCHIVE:-docs/results/cifar10/cells}     # the repo's archive
ATTACKS=${ATTACKS:-"badnets blended sig wanet lc lf iad"}  # a cell runs only where its teacher is finished
DEFENSES=${DEFENSES:-"dhbe pbe aft dfad ft"}       # CLP takes seconds on the CPU
MAX_CELLS=${MAX_CELLS:-16}

# Where teacher $1 (a run name) is finished with its weights: $M/teachers/$1, or its archived
# copy while its row is unfinished (the matrix archives it with model/ then); nothing if neither.
teacher_source() {
  if grep -q '"status": "complete"' "$M/teachers/$1/record.json" 2>/dev/null; then echo "$M/teachers/$1"
  elif [ -d "$ARCHIVE/teachers/$1/model" ]; then echo "$ARCHIVE/teachers/$1"; fi
}

# The cells of ATTACKS x DEFENSES whose teacher is finished (teacher_source) and which the archive
# lacks, one "attack defense" per line.
missing_cells() {
  for a in $ATTACKS; do
    t=cifar10-preact_resnet18-$a-s0
    [ -n "$(teacher_source $t)" ] || continue
    for d in $DEFENSES; do
      [ -f "$ARCHIVE/defenses/$t-$d/record.json" ] || echo "$a $d"
    done
  done
}

if [ "${1:-}" = prepare ]; then
  set -e; gpu_prepare
  rm -rf .gpu/teachers; mkdir -p .gpu/teachers
  missing_cells | head -n "$MAX_CELLS" > .gpu/cells.txt
  # Each cell's teacher, and the clean model that LC's and TrojanNN's teachers were made with
  # (the matrix would otherwise train it again before their defenses).
  for a in $(cut -d' ' -f1 .gpu/cells.txt | sort -u) clean; do
    t=cifar10-preact_resnet18-$a-s0; src=$(teacher_source $t)
    if [ -n "$src" ]; then cp -r "$src" .gpu/teachers/ && rm -rf ".gpu/teachers/$t/checkpoints"; fi
  done
  cat .gpu/cells.txt; du -sh .whl .gpu; exit 0
fi
if [ "${1:-}" = install ]; then
  # Merges the finished cells into the archive; an entry already there is kept.
  set -e
  [ -f "$2/cells.tgz" ] || { echo "no cells.tgz in $2: no cell finished"; exit 0; }
  T=$(mktemp -d); tar xzf "$2/cells.tgz" -C "$T"
  for d in "$T"/*/defenses/*; do
    n=$(basename "$d")
    if [ -e "$ARCHIVE/defenses/$n" ]; then echo "kept the existing $ARCHIVE/defenses/$n"
    else cp -r "$d" "$ARCHIVE/defenses/$n" && echo "installed $n"; fi
  done
  exit 0
fi

OUT=${OUT:-/tmp/out_defenses}; mkdir -p "$OUT"; PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  # The quickstart's teachers, trained here first; the defenses' smoke variants.
  BUDGET=${BUDGET:-300}
  CFG="experiments/configs/matrix_quickstart.py --config.datasets.mnist_subset.overrides.train.epochs=1"
  R=${R:-/tmp/runs_defenses_smoke}; rm -rf "$R"; mkdir -p "$R/logs"
  $PY -m experiments.run --config $CFG --config.out=$R/teachers_src "--config.attacks=('badnets',)" \
      "--config.defenses=()" > $R/logs/teachers.log 2>&1 || { cat $R/logs/teachers.log; exit 4; }
  TEACHERS=$R/teachers_src/teachers
  printf 'badnets dhbe\nbadnets pbe\n' > $R/cells.txt; CELLS=$R/cells.txt
else
  BUDGET=${BUDGET:-500}
  gpu_install || exit 3
  CFG=experiments/configs/matrix_cifar10_cpu.py
  R=$PWD/runs_defenses; rm -rf "$R"; mkdir -p "$R/logs"
  TEACHERS=$PWD/.gpu/teachers; CELLS=.gpu/cells.txt
fi
L=$R/logs
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $L/machine.txt 2>&1
while read -r a d; do
  [ -n "$a" ] || continue
  out=$R/m_${a}_$d; mkdir -p $out/teachers
  cp -r $TEACHERS/*-$a-s0 $out/teachers/; cp -r $TEACHERS/*-clean-s0 $out/teachers/ 2>/dev/null
  gpu_run "${a}_$d" $PY -m experiments.run --config $CFG --config.out=$out "--config.attacks=('$a',)" \
      "--config.defenses=('$d',)" --config.archive=$R/archive_${a}_$d &
done < "$CELLS"
gpu_wait_with_budget $BUDGET "config.out=$R/m_" $L/times.txt
cd "$R"
# Only the defense cells' archive entries (the teachers' are the CPU matrix's already); one file.
finished=$(ls -d archive_*/defenses 2>/dev/null)
if [ -n "$finished" ]; then tar czf $OUT/cells.tgz $finished; else echo "no cell finished"; fi
tar czf $OUT/logs.tgz logs
cat $L/machine.txt $L/times.txt
gpu_print_records archive_*/defenses/*/record.json
ls -la $OUT
