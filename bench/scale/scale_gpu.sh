#!/usr/bin/env bash
# The scale benchmark (bench/scale/scale.py) at full ImageNet-1K IPC10 budgets on one CUDA device: a ResNet-18
# teacher trained 5 epochs on the 1,000-class, 100k-image folder, then e2d (200 iterations), sre2l (1k), rded,
# ddoq and random at IPC10 in groups of 10 classes (batch 100, the papers'), select and evaluate, under the
# default mixed precision. Results: bench/scale/results/scale_gpu/ (their synthesis time fills the "measured" column of
# bench/scale/results/scale/table.md). Environment: LADDER (default 1000x100), WORKERS (DataLoader workers, default 8).
#
#     bash bench/scale/scale_gpu.sh [more bench/scale/scale.py arguments, e.g. --steps teacher_import distill_e2d]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench/scale/scale_gpu.sh: no CUDA device here')"
# shellcheck disable=SC2086
python bench/scale/scale.py --budget full --device cuda --workers "${WORKERS:-8}" --ladder ${LADDER:-1000x100} \
    --out bench/scale/results/scale_gpu "$@"
python bench/scale/scale.py --table    # the CPU table, now with the measured GPU column
