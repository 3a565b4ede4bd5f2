#!/bin/bash
# How it ran (2026-11-26, device tool, H200): from the repo root, with `.whl/` holding the pinned
# pure-Python wheels (flax 0.12.8, optax 0.2.8, orbax-checkpoint 0.12.8, chex 0.1.92,
# ml_collections 1.1.0; the GPU image has jax 0.11.2 but no ml_collections) and `.gpu/` holding
# a copy of ../shared/data/cifar10.tar.gz and teachers/{badnets,blended} (run dirs of the first session); results come back as archives in $OUT.
# Results and the table they gave: docs/results_cifar10.md.
# GPU session 2: DHBE/DFAD with the teacher's BN statistics kept (student_bn_train=False) on the
# BadNets and Blended teachers of session 1, and the paper-config DHBE iteration time.
set -u
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
OUT=${OUT:-/tmp/out2}; mkdir -p $OUT; BUDGET=${BUDGET:-140}; PY=${PY:-python3}
if [ -d .whl ] && [ "${SMOKE:-0}" = 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD; mkdir -p ../shared/data && cp .gpu/cifar10.tar.gz ../shared/data/
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
R=$PWD/runs_gpu2; L=$R/logs; rm -rf $R; mkdir -p $L; cp -r .gpu/teachers/* $R/
E="$PY -m experiments.erase"; C="--config experiments/configs/erase_dhbe.py:${DV:-cpu} --config.dhbe.student_bn_train=False"
run() { local name=$1; shift; local s=$(date +%s); "$@" > $L/$name.log 2>&1; echo "$name rc=$? took=$(( $(date +%s)-s ))s end=$(el)s" >> $L/times.txt; }
( while true; do sleep 10; (cd $R && tar czf $OUT/live.tgz logs */history.jsonl */record.json 2>/dev/null); done ) &
LIVE=$!
run bench $PY experiments/scripts/bench_dhbe_paper.py 40 &
$PY -c "from backdoor_core.data import load_dataset; load_dataset('${DS:-../shared/data/cifar10.tar.gz}')" > $L/data.log 2>&1
echo "data $(el)s" >> $L/times.txt
for a in badnets blended; do
  run dhbe_$a $E --defense dhbe --run $R/$a $C --out $R/$a-dhbe_bnfixed &
  run dfad_$a $E --defense dfad --run $R/$a $C --out $R/$a-dfad_bnfixed &
done
( sleep $BUDGET; echo "budget reached at $(el)s" >> $L/times.txt; pkill -INT -f "experiments\.|bench_dhbe"; sleep 8; pkill -KILL -f "experiments\.|bench_dhbe" ) &
KILLER=$!
for p in $(jobs -p); do [ "$p" = "$KILLER" ] || [ "$p" = "$LIVE" ] || wait "$p"; done
kill $KILLER $LIVE 2>/dev/null
echo "all done $(el)s" >> $L/times.txt
cd $R && tar czf $OUT/defenses2.tgz --exclude=checkpoints --exclude=model logs $(ls -d *-* 2>/dev/null) && rm -f $OUT/live.tgz
cat $L/times.txt; tail -3 $L/bench.log
