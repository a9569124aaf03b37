#!/usr/bin/env bash
# Fine-tuning levers for a pretrained start (issue 21), on the finetune-recipes study's data and
# 2000-step BarlowTwins backbone: LP-FT, frozen batch-norm statistics, and a head learning rate
# 10x the backbone's, each alone, at the rate valid chose for this backbone (3e-4), 1 % and 10 %
# of the labels, the study's seeds 0-4 (the same seed draws the same labelled subset, so every row
# pairs with the study's random-initialisation run). Everything else is the study's fine-tuning:
# 60 epochs, cosine, no vertical flips, at least 200 steps, ResNet-18, 64 px.
#
#   sonossl study benchmarks/finetune_recipes.yaml --out bench_out/ft/study --resume   # first
#   bash benchmarks/finetune_levers.sh [OUT=bench_out/ft/levers]                      # resumable
#   python benchmarks/finetune_levers.py bench_out/ft/study bench_out/ft/levers         # the table
#
# SONOSSL names the command (default: sonossl on PATH, else .venv/bin/sonossl); FRACTIONS the
# label fractions (default 10,1; 10 alone takes 15 runs of about 70 s each on 2 idle cores with AMX-BF16,
# 3-4 minutes without bf16 units). Seeds run outermost, so a stopped run already holds complete pairs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/bench_out/ft/levers}"
study="$here/bench_out/ft/study"
fractions="${FRACTIONS:-10,1}"  # FRACTIONS=10: the 10 % runs alone
sonossl="${SONOSSL:-$(command -v sonossl || echo "$here/.venv/bin/sonossl")}"
declare -A recipe=([lpft]="--lp-ft" [freezebn]="--freeze-bn" [head10]="--head-lr-mult 10")
for seed in 0 1 2 3 4; do
  for name in head10 lpft freezebn; do
    run="$out/$name/s$seed"
    want=$(( $(tr -cd , <<< "$fractions" | wc -c) + 2 ))  # the header and a row per fraction
    [[ -f "$run/results.csv" ]] && [[ $(wc -l < "$run/results.csv") -ge $want ]] && continue
    flag=--resume; [[ -d "$run" ]] || flag=
    # shellcheck disable=SC2086
    "$sonossl" evaluate --labels "$here/bench_out/ft/source/labelled" --init "$study/pretrain/barlowtwins-augment-all" \
      --backbone resnet18 --protocol finetune --fractions "$fractions" --seeds "$seed" --image-size 64 \
      --lr 3e-4 --lr-schedule cosine --epochs 60 --min-steps 200 --no-vflip ${recipe[$name]} \
      --out "$run" $flag --quiet
    echo "$(date -u +%H:%M:%S) $name seed $seed done"
  done
done
