#!/usr/bin/env bash
# BiLP on CIFAR-10 IPC10: select (loss / causal / random, keep 0.5 and 0.2), then distill + evaluate each
# pruned pool with the benchmark protocol. Selections go to bench/cifar10/results/cifar10_bilp/select/ (index files,
# JSON summaries with selection wall time, histograms); results to bench/cifar10/results/cifar10_bilp/*.json + table.md.
# Budget note: the loss criterion's proxy is ConvNet-3 trained for PROXY_EPOCHS (the spec says ~5; default 2
# here to fit a CPU sitting). Each method also runs unpruned into the same table (the control).
# Usage: bash bench/cifar10/bilp_cifar10.sh [methods...]   (default: rded; sre2l_pool = sre2l matching the BN
# statistics of the pruned pool, the distiller that reads no real image)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10}
TEACHER=bench/teacher_convnet3_cifar10.pt
OUT=bench/cifar10/results/cifar10_bilp
PROXY_EPOCHS=${PROXY_EPOCHS:-2}
METHODS=${*:-rded}
mkdir -p $OUT/select
for keep in 0.5 0.2; do
  k=${keep#0.}
  for crit in loss causal random; do
    f=$OUT/select/${crit}${k}.pt
    extra=""
    [ $crit = loss ] && extra="--proxy-epochs $PROXY_EPOCHS"
    [ $crit = causal ] && extra="--teacher $TEACHER"
    [ -f $f ] || ddkit select --data $DATA --criterion $crit --keep $keep $extra --out $f --quiet
  done
done
python bench/cifar10/cifar10.py --methods $METHODS --labels soft --quiet --out $OUT
for keep in 5 2; do
  for crit in loss causal random; do
    python bench/cifar10/cifar10.py --methods $METHODS --labels soft --quiet --subset $OUT/select/${crit}${keep}.pt --out $OUT
  done
done
