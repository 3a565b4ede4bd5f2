#!/bin/bash
# How it ran (2026-11-26, device tool, H200): from the repo root, with `.whl/` holding the pinned
# pure-Python wheels (flax 0.12.8, optax 0.2.8, orbax-checkpoint 0.12.8, chex 0.1.92,
# ml_collections 1.1.0; the GPU image has jax 0.11.2 but no ml_collections) and `.gpu/` holding
# a copy of ../shared/data/cifar10.tar.gz; results come back as archives in $OUT.
# Results and the table they gave: docs/results_cifar10.md.
# One GPU session: every CIFAR-10 teacher of the attack table, clean models, the cpu-config
# defenses on BadNets/Blended (+ DHBE calibration variants), detection, and DHBE `paper` timing.
# SMOKE=1 runs the same graph on the shipped MNIST subset with tiny settings (local check).
set -u
START=$(date +%s)
el() { echo $(( $(date +%s) - START )); }
OUT=${OUT:-/tmp/out_smoke}; mkdir -p "$OUT"
SMOKE=${SMOKE:-0}
BUDGET=${BUDGET:-450}   # seconds after which everything still running is stopped and packed
if [ -d .whl ] && [ "$SMOKE" = 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p ../shared/data && cp .gpu/cifar10.tar.gz ../shared/data/
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
R=$PWD/runs_gpu; L=$PWD/runs_gpu/logs
if [ "${PACK_ONLY:-0}" = 0 ]; then rm -rf "$R"; mkdir -p "$R" "$L"; fi
(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; nproc) > $L/machine.txt 2>&1
$PY -c "import jax,flax,optax,orbax.checkpoint as o,ml_collections; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())" > $L/versions.txt 2>&1
if [ "$SMOKE" = 1 ]; then
  DS=data/mnist_subset.npz
  AOV="--config.dataset=$DS --config.model=small_cnn --config.width=0.5 --config.train.epochs=1"
  TOV="$AOV"; R18="--config.model=small_cnn --config.width=1.0"
  DV=smoke; PV=smoke; AV=smoke; ITS=40; PAPER_STOP=20
else
  DS=../shared/data/cifar10.tar.gz
  AOV=""; TOV=""; R18="--config.model=resnet18 --config.width=1.0"
  DV=cpu; PV=cpu; AV=cpu; ITS=1500; PAPER_STOP=3000
fi
if [ "${PACK_ONLY:-0}" = 0 ]; then
$PY -c "from backdoor_core.data import load_dataset; load_dataset('$DS')" > $L/data.log 2>&1
echo "data $(el)s" >> $L/times.txt
A="$PY -m experiments.attack --config experiments/configs/attack_cifar10.py $AOV"
T="$PY -m experiments.train --config experiments/configs/train_cifar10.py $TOV"
E="$PY -m experiments.erase"
run() { local name=$1; shift; local s=$(date +%s); "$@" > $L/$name.log 2>&1; echo "$name rc=$? took=$(( $(date +%s)-s ))s end=$(el)s" >> $L/times.txt; }
defend() {  # defenses on one teacher
  local a=$1
  run dhbe_$a $E --defense dhbe --run $R/$a --config experiments/configs/erase_dhbe.py:$DV --out $R/$a-dhbe &
  run dfad_$a $E --defense dfad --run $R/$a --config experiments/configs/erase_dhbe.py:$DV --out $R/$a-dfad &
  run dhbe_long_$a $E --defense dhbe --run $R/$a --config experiments/configs/erase_dhbe.py:$DV --config.dhbe.iterations=$ITS --out $R/$a-dhbe_long &
  run dhbe_lr01_$a $E --defense dhbe --run $R/$a --config experiments/configs/erase_dhbe.py:$DV --config.dhbe.student_lr=0.1 --config.dhbe.iterations=$ITS --out $R/$a-dhbe_lr01 &
  run dhbe_lam1_$a $E --defense dhbe --run $R/$a --config experiments/configs/erase_dhbe.py:$DV --config.dhbe.lam=1.0 --config.dhbe.iterations=$ITS --out $R/$a-dhbe_lam1 &
  run pbe_$a $E --defense pbe --run $R/$a --config experiments/configs/erase_pbe.py:$PV --out $R/$a-pbe &
  run aft_$a $E --defense aft --run $R/$a --config experiments/configs/erase_aft.py:$AV --out $R/$a-aft &
  wait
}
(
  run clean $T --config.out=$R/clean
  run trojannn $A --config.attack=trojannn --config.clean_run=$R/clean --config.out=$R/trojannn &
  run lc $A --config.attack=lc --config.clean_run=$R/clean --config.out=$R/lc &
  wait
) &
run clean_s1 $T --config.out=$R/clean_s1 --config.train.seed=1 &
(run badnets $A --config.attack=badnets --config.out=$R/badnets; defend badnets) &
(run blended $A --config.attack=blended --config.out=$R/blended; defend blended) &
for a in sig wanet iad badnets_checker; do run $a $A --config.attack=$a --config.out=$R/$a & done
(
  run r18_badnets $A --config.attack=badnets $R18 --config.out=$R/r18_badnets
  run r18_dhbe_paper $E --defense dhbe --run $R/r18_badnets --config experiments/configs/erase_dhbe.py:paper \
      --config.stop_after=$PAPER_STOP --config.eval_every=500 --config.checkpoint_every=1000 --out $R/r18_badnets-dhbe_paper
) &
# stop whatever still runs at the budget, so that packing always happens
( sleep $BUDGET; echo "budget reached at $(el)s" >> $L/times.txt; pkill -INT -f "experiments\." ; sleep 15; pkill -KILL -f "experiments\." ) &
KILLER=$!
fi
for p in $(jobs -p); do [ "$p" = "$KILLER" ] || wait "$p"; done
while pgrep -f "experiments\.(attack|train|erase)" > /dev/null; do sleep 2; done
kill ${KILLER:-} 2>/dev/null
echo "all done $(el)s" >> $L/times.txt
runs=$(cd $R && ls -d */ | tr -d / | grep -v logs)
timeout 90 $PY -m experiments.detect --runs $(for r in $runs; do case $r in *-*|r18_*) ;; *) [ -d $R/$r/model ] && echo $R/$r;; esac; done) --out $L/detection.md > $L/detect.log 2>&1
echo "detect done $(el)s" >> $L/times.txt
# pack: teachers' run dirs without checkpoints (models, records, histories, pngs, triggers) in two
# archives (<16 MiB each); defense runs and the ResNet-18 runs without their models (detected here).
cd $R
teachers=$(for r in $runs; do case $r in *-*|r18_*) ;; *) echo $r;; esac; done)
set -- $teachers; half=$(( ($# + 1) / 2 ))
tar czf $OUT/teachers_a.tgz --exclude=checkpoints $(echo $teachers | tr ' ' '\n' | head -n $half) 2>/dev/null
tar czf $OUT/teachers_b.tgz --exclude=checkpoints $(echo $teachers | tr ' ' '\n' | tail -n +$(( half + 1 ))) 2>/dev/null
others=$(for r in $runs; do case $r in *-*|r18_*) echo $r;; esac; done)
tar czf $OUT/defenses.tgz --exclude=checkpoints --exclude=model $others 2>/dev/null
tar czf $OUT/logs.tgz logs
ls -la $OUT >> $L/times.txt
cat $L/times.txt
