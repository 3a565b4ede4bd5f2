#!/bin/bash
# The next lent-GPU session in one device call (written 2026-11-29, session 26): the teachers the
# CPU cannot train (IAD: its mask pre-training takes ~23 h on the 2-core CPU) with
# gpu_teachers.sh, and, side by side, the defense cells the archive still lacks with
# gpu_defenses.sh (~8 h of the CPU). One install for both; each writes to its own folder.
#
#   bash experiments/scripts/gpu_session.sh prepare     # here: wheels, CIFAR-10, teachers, .gpu/cells.txt
#   device run: command "bash experiments/scripts/gpu_session.sh", carry [".whl", ".gpu"], timeout_s 580
#   SMOKE=1 PY=python bash experiments/scripts/gpu_session.sh   # both graphs on the MNIST subset, tiny
#   bash experiments/scripts/gpu_session.sh install DIR # here: DIR/teachers/* into the CPU matrix,
#                                                       # DIR/defenses/cells.tgz into the archive
# Output: $OUT/teachers/{teachers_<attack>.tgz,logs.tgz} and $OUT/defenses/{cells.tgz,logs.tgz}.
# TEACHERS (default "none": every teacher of the CPU matrix is archived, IAD's since 2026-12-05 with a
# 1-epoch mask pre-training; "iad" trains one on the GPU with the matrix's config), BUDGET (default 480 s for both) and the two scripts' own variables
# (ATTACKS, DEFENSES, MAX_CELLS for the defenses) pass through.
set -u
. experiments/scripts/gpu_setup.sh
S=experiments/scripts
TEACHERS=${TEACHERS:-none}
if [ "${1:-}" = prepare ]; then
  set -e; bash $S/gpu_defenses.sh prepare; exit 0   # gpu_prepare included
fi
if [ "${1:-}" = install ]; then
  set -e
  if ls "$2"/teachers/teachers_*.tgz >/dev/null 2>&1; then bash $S/gpu_teachers.sh install "$2/teachers"; fi
  bash $S/gpu_defenses.sh install "$2/defenses"
  exit 0
fi
OUT=${OUT:-/tmp/out_session}; mkdir -p "$OUT/teachers" "$OUT/defenses"
[ "${SMOKE:-0}" = 1 ] || gpu_install || exit 3   # SMOKE=1: both scripts' MNIST graphs, here
export GPU_INSTALLED=1 BUDGET=${BUDGET:-480}
if [ "$TEACHERS" != none ]; then  # TEACHERS=none: the defense cells only
  OUT=$OUT/teachers ATTACKS="$TEACHERS" bash $S/gpu_teachers.sh > "$OUT/teachers.txt" 2>&1 &
fi
touch "$OUT/teachers.txt"
OUT=$OUT/defenses bash $S/gpu_defenses.sh > "$OUT/defenses.txt" 2>&1 &
wait
cat "$OUT/teachers.txt" "$OUT/defenses.txt"
