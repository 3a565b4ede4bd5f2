#!/bin/bash
# SUPERSEDED (2026-11-28, session 24): it needs the CPU-trained BadNets/Blended teachers, lost with
# an earlier machine's ~/runs. The next lent-GPU call is instead experiments/scripts/gpu_session.sh
# (2026-11-29: the IAD teacher and the archive's missing defense cells, side by side).
# The next lent-GPU session's work, prepared so that one device-tool call does it (rewritten
# 2026-11-28 after the second H200 session; the device time is 15 minutes per session, start included):
#   - the IAD teacher on CIFAR-10 (its mask pre-training needs ~23 h on the 2-core CPU), brought
#     back with its model so DHBE / PBE / CLP can run on it on the CPU (lost on 2026-11-28 to
#     the dataset-extraction race, fixed since);
#   - DHBE with the `paper` settings over 4,000 iterations on the CPU-trained BadNets teacher (the
#     2026-11-28 run reached 76.0 / 8.4 at 3,000 and stopped at 3,467 at the budget);
#   - DHBE and DFAD with the `paper` settings plus the `cpu` config's three fixes (teacher's BN
#     kept, G warm-up, class balance) on the Blended teacher, where the plain `paper` settings
#     collapsed both to 10% C-Acc: do the fixes hold at batch 256 and student lr 0.1?
# Everything runs side by side (one small model each: the GPU is mostly idle for any one). At
# BUDGET seconds all are sent SIGINT: since backdoor_core/interrupt.py they checkpoint and stop,
# and checkpoints are also written every 500 iterations, so what did not finish can be resumed
# (a process still compiling, or IAD still pre-training its mask generator, which has no
# checkpoint, is killed 45 s later). Smoke-tested here with SMOKE=1 (BUDGET=45: DFAD stopped
# with its checkpoint and exit 130; the others were still compiling on the loaded CPU).
#
#   bash experiments/scripts/gpu_next_session.sh prepare   # here: wheels into .whl/, data and teachers into .gpu/
#   device run: command "bash experiments/scripts/gpu_next_session.sh", carry [".whl", ".gpu"], timeout_s 480
#   SMOKE=1 bash experiments/scripts/gpu_next_session.sh   # the same graph on the shipped MNIST subset, tiny
# Results come back as $OUT/runs.tgz (run directories without checkpoints; the IAD teacher with its model).
set -u
. experiments/scripts/gpu_setup.sh
if [ "${1:-}" = prepare ]; then
  set -e
  gpu_prepare
  for a in badnets blended; do
    d=${TEACHERS:-$HOME/runs/matrix_cifar10_cpu/teachers}/cifar10-preact_resnet18-$a-s0
    mkdir -p .gpu/teachers/$a && cp -r $d/model $d/record.json $d/trigger.json $d/trigger.npz $d/history.jsonl .gpu/teachers/$a/
  done
  du -sh .whl .gpu
  exit 0
fi
OUT=${OUT:-/tmp/out_next}; mkdir -p "$OUT"; PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=${BUDGET:-240}; ITERS=20; EVERY=10
  AOV="--config.dataset=data/mnist_subset.npz --config.model=small_cnn --config.width=0.5 --config.train.epochs=1 --config.params.iad.mask_epochs=1"
  R=${R:-/tmp/runs_next_smoke}; rm -rf $R; mkdir -p $R/logs
  for a in badnets blended; do
    $PY -m experiments.attack --config experiments/configs/attack_base.py --config.attack=$a $AOV --config.out=$R/$a > $R/logs/teacher_$a.log 2>&1
  done
  DCFG="--config experiments/configs/erase_dhbe.py:smoke"
else
  BUDGET=${BUDGET:-380}; ITERS=${ITERS:-4000}; EVERY=500; AOV=""
  gpu_install || exit 3
  R=$PWD/runs_next; rm -rf $R; mkdir -p $R/logs; cp -r .gpu/teachers/* $R/
  DCFG="--config experiments/configs/erase_dhbe.py:paper"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
L=$R/logs
nvidia-smi --query-gpu=name,memory.total --format=csv > $L/machine.txt 2>&1
if [ "${SMOKE:-0}" = 1 ]; then
  gpu_run iad $PY -m experiments.attack --config experiments/configs/attack_base.py --config.attack=iad $AOV --config.out=$R/iad &
else
  gpu_run iad $PY -m experiments.attack --config experiments/configs/attack_cifar10.py --config.attack=iad --config.out=$R/iad &
fi
E="$PY -m experiments.erase"
C="$DCFG --config.dhbe.iterations=$ITERS --config.eval_every=$EVERY --config.checkpoint_every=$EVERY"
FIX="--config.dhbe.student_bn_train=False --config.dhbe.generator_warmup=200 --config.dhbe.balance_weight=1.0"
gpu_run dhbe_badnets $E --defense dhbe --run $R/badnets $C --out $R/badnets-dhbe_paper$ITERS &
gpu_run dhbe_blended $E --defense dhbe --run $R/blended $C $FIX --out $R/blended-dhbe_paperfix$ITERS &
gpu_run dfad_blended $E --defense dfad --run $R/blended $C $FIX --out $R/blended-dfad_paperfix$ITERS &
gpu_wait_with_budget $BUDGET "experiments\\.(attack|erase) .*$R/" $L/times.txt  # only this script's runs
cd $R && tar czf $OUT/runs.tgz --exclude=checkpoints --exclude='*-*/model' logs iad $(ls -d *-* 2>/dev/null)
cat $L/times.txt
for f in */history.jsonl; do echo "$f: $(grep -c . $f) rows; last: $(tail -n 1 $f | cut -c 1-300)"; done
