#!/usr/bin/env bash
# The CPU evidence behind the README's GLUE table: the 6-layer MiniLM teacher (PyPI) → a 3-layer student
# copied from teacher layers 1,3,5, every method, seed 42, 3 epochs (the reference runs 6), other
# settings per task as in the TED reference scripts except STS-B's batch size (32 instead of 16, to halve
# the step count on 2 CPU cores). Resumable: re-running skips cached stages and resumes interrupted runs.
#   usage: DISTILLBENCH_DATA=../shared/data bash scripts/reproduce_glue_cpu.sh [results-dir] [tasks] [methods]
set -euo pipefail
results=${1:-results}
tasks=${2:-"mrpc stsb"}
methods=${3:-"finetune kd lwd ted minilm minilmv2"}
declare -A extra=([stsb]="--set batch_size=32")
for task in $tasks; do
  for method in $methods; do
    # shellcheck disable=SC2086
    distillbench run --method "$method" --task "$task" --epochs 3 --seed 42 --results-dir "$results" \
      --no-progress ${extra[$task]:-}
  done
done
