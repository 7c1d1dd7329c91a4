#!/usr/bin/env bash
# A short GPU check (one CUDA machine, minutes): the harness benchmark in bf16 (plain PyTorch vs harness,
# cached vs student-only KD, Stage I cached vs live, whole 1-epoch runs of the student-only baseline and
# TED) and a 1-epoch MRPC KD and TED run in bf16, all writing records whose `hardware.gpu` names the device. Run from the repository root with the data folder at ../shared/data (or pass it):
#   bash scripts/gpu_check.sh [data-dir] [results-dir]
set -euo pipefail
data=${1:-../shared/data}
results=${2:-results}
python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check is for a GPU")'
export DISTILLBENCH_DATA=$data
distillbench bench --task mrpc --steps 60 --rounds 2 --bf16 --end-to-end 1 --results-dir "$results"
for method in kd ted; do
  distillbench run --method "$method" --task mrpc --epochs 1 --seed 1 --teacher-seed 1 \
    --set bf16=true --set dataloader_num_workers=2 --results-dir "$results" --no-progress
done
distillbench table --tasks mrpc --results-dir "$results"
