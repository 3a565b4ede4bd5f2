#!/bin/bash
# One lent-GPU call that trains the CIFAR-10 matrix's backdoored teachers (written 2026-11-28,
# session 24): each attack's teacher exactly as `experiments.run --config
# experiments/configs/matrix_cifar10_cpu.py` would train it (same config file, same overrides,
# defenses=()), one process per attack side by side (the H200 is mostly idle for any one of these
# small models; a 15-epoch teacher took ~3.5 min with seven beside it on 2026-11-27), brought back
# with their models, so that the CPU matrix only has to run the defenses: a teacher costs ~45 min on
# the 2-core CPU, and IAD's (mask pre-training ~23 h there) cannot be trained on it at all.
# Each teacher's record.json says where it was trained (`versions.backend`).
#
#   bash experiments/scripts/gpu_teachers.sh prepare     # here: wheels into .whl/, CIFAR-10 into .gpu/
#   device run: command "bash experiments/scripts/gpu_teachers.sh", carry [".whl", ".gpu"], timeout_s 580
#   SMOKE=1 bash experiments/scripts/gpu_teachers.sh     # the same graph on the shipped MNIST subset, tiny
#   bash experiments/scripts/gpu_teachers.sh install DIR  # here: unpack DIR/teachers_*.tgz into the CPU matrix
#
# At BUDGET seconds every process still running is sent SIGINT (a teacher, IAD's mask pre-training
# included, checkpoints and stops; but only finished teachers come back), then KILL 30 s later. Results come back as
# $OUT/teachers_<attack>.tgz (teacher run directories without checkpoints; at most seven
# attacks per call, since logs.tgz is the eighth file) and $OUT/logs.tgz.
set -u
. experiments/scripts/gpu_setup.sh
ATTACKS=${ATTACKS:-"iad lc lf"}  # at most seven (the 8-file limit); the teachers still missing (TrojanNN: trained on the CPU)
gpu_prepare_if_asked "$@"
if [ "${1:-}" = install ]; then
  # Unpacks the teachers into the CPU matrix's run folder; an existing teacher there is kept.
  # Caveat: an LC or TrojanNN teacher was made with the GPU's clean model (in the same archive; PBE
  # finds it beside the teacher, experiments.defenses.pbe.clean_run_dir); if this machine has a
  # clean model of its own, that one is kept, and PBE's rebuild of LC's poisoned set will then
  # differ from the attack's and fail (InputError): move the local clean model away first then.
  set -e
  M=${M:-$HOME/runs/matrix_cifar10_cpu}/teachers; T=$(mktemp -d); mkdir -p "$M"
  for f in "$2"/teachers_*.tgz; do tar xzf "$f" -C "$T"; done
  for d in "$T"/*/teachers/*; do
    n=$(basename "$d")
    if [ -e "$M/$n" ]; then echo "kept the existing $M/$n"; else cp -r "$d" "$M/$n" && echo "installed $n"; fi
  done
  exit 0
fi
OUT=${OUT:-/tmp/out_teachers}; mkdir -p "$OUT"; PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=${BUDGET:-300}; ATTACKS=${SMOKE_ATTACKS:-"badnets lf"}
  CFG="experiments/configs/matrix_quickstart.py --config.datasets.mnist_subset.overrides.train.epochs=1"
  R=${R:-/tmp/runs_teachers_smoke}
else
  BUDGET=${BUDGET:-470}
  gpu_install || exit 3
  CFG=experiments/configs/matrix_cifar10_cpu.py
  R=$PWD/runs_teachers
fi
rm -rf "$R"; mkdir -p "$R/logs"; L=$R/logs
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $L/machine.txt 2>&1
for a in $ATTACKS; do
  gpu_run "$a" $PY -m experiments.run --config $CFG --config.out=$R/m_$a "--config.attacks=('$a',)" "--config.defenses=()" &
done
gpu_wait_with_budget $BUDGET "config.out=$R/m_" $L/times.txt
cd "$R"
# One file per attack (the device tool brings back at most 8 files of at most 16 MiB each; two
# halves of eight teachers were 17 and 23 MB on 2026-11-28 and were left behind).
for m in m_*; do tar czf $OUT/teachers_${m#m_}.tgz --exclude=checkpoints "$m"; done
tar czf $OUT/logs.tgz logs
cat $L/machine.txt $L/times.txt
gpu_print_records m_*/teachers/*/record.json
ls -la $OUT
