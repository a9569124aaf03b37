#!/usr/bin/env bash
# Fine-tuning levers (issue 21): LP-FT, frozen batch-norm statistics and a head learning rate 10x
# the backbone's, each alone, for the pretrained start and for random initialisation, from a
# finished study or demo folder (its labelled source, its BarlowTwins backbone, and its plain
# fine-tuning runs, which every lever row pairs with by seed: the same seed draws the same
# labelled subset). Each lever run chooses its rate on the valid split among RATES, as the study's
# plain runs do, and scores the test split once. Everything else is the demo's fine-tuning:
# 60 epochs, cosine, no vertical flips, at least 200 steps, batch 32, 10 validation passes.
#
#   make demo-long                                             # or any study with finetune runs
#   bash benchmarks/finetune_levers.sh demo_out_long bench_out/levers   # resumable
#   python benchmarks/finetune_levers.py demo_out_long bench_out/levers  # the table
#
# Environment: SONOSSL (default: sonossl on PATH, else .venv/bin/sonossl); FRACTIONS (default
# 10,1); SEEDS (default 0 1 2 3 4); RECIPES (default: head10 lpft freezebn); INITS (default:
# pretrained random; frozen BN statistics are not run from random initialisation, whose
# statistics are those of an untrained network); RATES (default 1e-3,3e-4; frozen BN statistics
# try 3e-4,1e-4: at 3e-4 they broke fine-tuning on the paper-rate backbone); LANE and LANES
# (default 0 of 1): run every LANES-th run from the LANE-th, so two processes with
# OMP_NUM_THREADS=1 share 2 cores. Seeds run outermost, so a stopped run already holds complete pairs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
study="${1:?usage: finetune_levers.sh STUDY_DIR [OUT]}"
out="${2:-$here/bench_out/levers}"
fractions="${FRACTIONS:-10,1}"
rates="${RATES:-1e-3,3e-4}"
lane="${LANE:-0}" lanes="${LANES:-1}"
sonossl="${SONOSSL:-$(command -v sonossl || echo "$here/.venv/bin/sonossl")}"
labels="$study/source/labelled"
backbone=$(ls -d "$study"/pretrain/barlowtwins-* | head -n 1)
[[ -f "$labels/test.csv" && -f "$backbone/backbone.pt" ]] || { echo "$study: no source/labelled or pretrain/barlowtwins-*/backbone.pt" >&2; exit 2; }
declare -A flag=([lpft]="--lp-ft" [freezebn]="--freeze-bn" [head10]="--head-lr-mult 10")
declare -A init_of=([pretrained]="$backbone" [random]=random)
n=0
for seed in ${SEEDS:-0 1 2 3 4}; do
  for init in ${INITS:-pretrained random}; do
    for name in ${RECIPES:-head10 lpft freezebn}; do
      [[ $init == random && $name == freezebn ]] && continue
      n=$((n + 1)); (( (n - 1) % lanes == lane )) || continue
      run="$out/$init/$name/s$seed"
      want=$(( $(tr -cd , <<< "$fractions" | wc -c) + 2 ))  # the header and a row per fraction
      [[ -f "$run/results.csv" ]] && [[ $(wc -l < "$run/results.csv") -ge $want ]] && continue
      grid="$rates"; [[ $name == freezebn ]] && grid="${RATES:-3e-4,1e-4}"
      resume=--resume; [[ -d "$run" ]] || resume=
      # shellcheck disable=SC2086
      "$sonossl" evaluate --labels "$labels" --init "${init_of[$init]}" --backbone resnet18 --protocol finetune \
        --fractions "$fractions" --seeds "$seed" --image-size 64 --batch-size 32 --epochs 60 --min-steps 200 \
        --val-evals 10 --lr-schedule cosine --no-vflip --select-on-valid "lr=$grid" ${flag[$name]} \
        --no-save-models --out "$run" $resume --quiet
      echo "$(date -u +%H:%M:%S) $init $name seed $seed done"
    done
  done
done
