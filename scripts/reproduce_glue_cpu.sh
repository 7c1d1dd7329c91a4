#!/usr/bin/env bash
# The CPU evidence behind the README's GLUE table: the 6-layer MiniLM teacher (PyPI) → a 3-layer student
# copied from teacher layers 1,3,5, every method on MRPC and STS-B, 3 epochs (the reference runs 6),
# seed 42, per-task learning rates / batch sizes / alphas of the TED reference. Resumable: re-running
# skips cached stages and resumes interrupted runs from their last checkpoint.
#   usage: DISTILLBENCH_DATA=../shared/data bash scripts/reproduce_glue_cpu.sh [results-dir] [tasks] [methods]
set -euo pipefail
results=${1:-results}
tasks=${2:-"mrpc stsb"}
methods=${3:-"finetune kd lwd ted minilm minilmv2"}
for task in $tasks; do
  for method in $methods; do
    distillbench run --method "$method" --task "$task" --epochs 3 --seed 42 --results-dir "$results" --no-progress
  done
done
