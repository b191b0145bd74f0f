#!/usr/bin/env bash
# GPU readiness check (bench/gpu/gpu_check.py): every method on tiny generated data, bf16 autocast,
# channels_last and --compile, e2d's paper recipe at 224 px with E2D's five teacher architectures (random
# weights; seconds per image-iteration, squeeze time and statistics size), student training images/s.
# Stopped at 8 minutes; writes bench/results/gpu/gpu_check.json section by section.
#
#     bash bench/gpu_check.sh                         # on the CUDA device
#     bash bench/gpu_check.sh --device cpu --tiny     # the same code paths at toy sizes, on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" python bench/gpu/gpu_check.py "$@"
