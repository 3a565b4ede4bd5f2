#!/bin/bash
# One lent-GPU call for the question issue 5 leaves open (written 2026-12-06, session 45): do PBE
# and AFT erase a patch from a full-width PreAct-ResNet-18, the paper's model? Every CIFAR-10
# teacher here is width 1/4 (a width-1 epoch takes over an hour on the 2-core CPU), and on those
# both defenses fail on patches (BadNets: PBE 81.3 / 95.5, AFT 81.9 / 27.1) while erasing Blended.
# Chains side by side, each a plain CLI command per step (each reproduces on any machine):
#   A  BadNets teacher at width 1 -> AFT (`cpu` variant) -> PBE (`cpu` variant)
#   C  clean model at width 1 (issue 3's C-Acc reference, and the detector's reference)
#   B  with CONTROL=1 only: Blended teacher at width 1 -> PBE (the control: erased at width 1/4,
#      82.1 / 3.8); off by default so that A has the GPU to itself but for C. How long a width-1
#      teacher takes there is not measured (width 1/4: ~3.5 min for 15 epochs, seven side by side).
# then, on what finished, the detector at 6 / 16 / 32 per 255 with the clean model as reference:
#   python -m experiments.attack --config experiments/configs/attack_cifar10.py --config.attack=badnets \
#       --config.width=1.0 --config.out=R/badnets_w1
#   python -m experiments.erase --defense aft --run R/badnets_w1 --config experiments/configs/erase_aft.py:cpu --out R/badnets_w1-aft
#   python -m experiments.erase --defense pbe --run R/badnets_w1 --config experiments/configs/erase_pbe.py:cpu --out R/badnets_w1-pbe
#   python -m experiments.train --config experiments/configs/train_cifar10.py --config.width=1.0 --config.out=R/clean_w1
#   python -m experiments.detect --runs R/* --eps 6 16 32 --reference R/clean_w1
#
#   bash experiments/scripts/gpu_issue5_fullwidth.sh prepare   # here: wheels into .whl/, CIFAR-10 into .gpu/
#   device run: command "bash experiments/scripts/gpu_issue5_fullwidth.sh", carry [".whl", ".gpu"], timeout_s 580
#   SMOKE=1 bash experiments/scripts/gpu_issue5_fullwidth.sh   # the same graph on the shipped MNIST subset, tiny
#
# At BUDGET seconds (default 420, leaving the detector 120 s) every run still going gets SIGINT (it checkpoints and stops).
# A width-1 model is 45 MB and the device tool brings back at most 16 MiB per file, so no model
# or checkpoint comes back and nothing resumes in a later call: the detector runs there, and
# $OUT/runs.tgz holds every run directory without model/ and its checkpoint folders (records, histories,
# triggers, plots), with $OUT/detect.md (+ .json) and $OUT/logs.tgz.
set -u
. experiments/scripts/gpu_setup.sh
gpu_prepare_if_asked "$@"
OUT=${OUT:-/tmp/out_issue5}; mkdir -p "$OUT"; PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=${BUDGET:-900}; R=${R:-/tmp/runs_issue5_smoke}; VARIANT=smoke
  DATA="--config.dataset=data/mnist_subset.npz --config.model=small_cnn --config.width=0.25 --config.train.epochs=1"
  TRAIN_CFG=experiments/configs/train_base.py; ATTACK_CFG=experiments/configs/attack_base.py
else
  BUDGET=${BUDGET:-420}; R=$PWD/runs_issue5; VARIANT=cpu
  gpu_install || exit 3
  DATA="--config.width=1.0"
  TRAIN_CFG=experiments/configs/train_cifar10.py; ATTACK_CFG=experiments/configs/attack_cifar10.py
fi
rm -rf "$R"; mkdir -p "$R/logs"; L=$R/logs
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $L/machine.txt 2>&1
complete() { grep -q '"status": "complete"' "$R/$1/record.json" 2>/dev/null; }
erase() {  # erase DEFENSE TEACHER: the defense's run R/TEACHER-DEFENSE, once the teacher is complete
  complete "$2" && gpu_run "$2-$1" $PY -m experiments.erase --defense "$1" --run "$R/$2" \
    --config "experiments/configs/erase_$1.py:$VARIANT" --out "$R/$2-$1"
}
( gpu_run badnets_w1 $PY -m experiments.attack --config $ATTACK_CFG $DATA --config.attack=badnets --config.out=$R/badnets_w1
  erase aft badnets_w1; erase pbe badnets_w1 ) &
if [ "${CONTROL:-0}" = 1 ]; then
  ( gpu_run blended_w1 $PY -m experiments.attack --config $ATTACK_CFG $DATA --config.attack=blended --config.out=$R/blended_w1
    erase pbe blended_w1 ) &
fi
gpu_run clean_w1 $PY -m experiments.train --config $TRAIN_CFG $DATA --config.out=$R/clean_w1 &
gpu_wait_with_budget $BUDGET "$R/" $L/times.txt
# from the repository root: a record's dataset path may be relative to it (the smoke's data/mnist_subset.npz)
done_runs=$(for d in "$R"/*/; do d=$(basename "$d"); [ "$d" != logs ] && complete "$d" && echo "$R/$d"; done)
if complete clean_w1 && [ -n "$done_runs" ]; then
  timeout ${DETECT_TIMEOUT:-120} $PY -m experiments.detect --runs $done_runs --eps 6 16 32 --reference $R/clean_w1 --out $OUT/detect.md \
    > $L/detect.log 2>&1; echo "detect rc=$? end=$(el)s" >> $L/times.txt
fi
cd "$R"
tar czf $OUT/runs.tgz --exclude='*checkpoints' --exclude=model --exclude=logs --exclude='.*.lock' .
tar czf $OUT/logs.tgz logs
cat $L/machine.txt $L/times.txt
gpu_print_records */record.json
ls -la $OUT
