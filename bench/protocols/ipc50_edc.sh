#!/bin/bash
# CIFAR-10 IPC 50 under EDC's student protocol: random real images and the two best IPC 10 methods
# under `edc` (e2d, delt), distilled from the 82.6 % ConvNet-3 teacher at bench/cifar10/cifar10.py's budgets (draw 0);
# ConvNet-3 students, soft labels, 1000 epochs, final EMA (eval_every=0: no test passes during training).
# Resumable: a run's data.pt is kept, finished student seeds are stored in its metrics.json and skipped, and an
# unfinished seed resumes from its checkpoint. Budget measured on 2 cores, two of these side by side at 1 thread
# each: 32-43 min per student, plus synthesis (e2d ~5 min, delt ~10 min).
#   SEEDS=3 bash bench/protocols/ipc50_edc.sh random e2d delt   # student seeds 0-2 each (default SEEDS=1: seed 0)
set -e
cd "$(dirname "$0")/.."
T=bench/teacher_convnet3_cifar10.pt D=${DATA:-../shared/datasets/cifar10} OUT=bench/protocols/results/cifar10_ipc50_edc
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for m in "$@"; do
  case $m in   # bench/cifar10/cifar10.py's BUDGETS
    e2d) set_=(--set iterations=200) ;;
    delt) set_=(--set iterations=500 --set round_iters=100) ;;
    *) set_=() ;;
  esac
  run=$OUT/runs/${m}_ipc50
  [ -f "$run/data.pt" ] || ddkit distill --method "$m" --ipc 50 --seed 0 "${set_[@]}" --teacher $T --data "$D" --out "$run"
  ddkit evaluate "$run" --seeds "${SEEDS:-1}" --labels soft --teacher $T --data "$D" --protocol edc \
    --pset eval_every=0 --json $OUT/${m}_ipc50.json
done
