#!/usr/bin/env bash
# The CPU evidence behind the README's SQuAD table: the 6-layer MiniLM teacher (PyPI) → a 3-layer student
# copied from teacher layers 1,3,5, seed 42, trained on the real SQuAD training subset in ../shared/data
# and scored on the full official dev set. The data dir must hold squad/train-v1.1.json and dev-v1.1.json
# (v2: train-v2.0.json, dev-v2.0.json); other file names are task options (--set train_file=…, as
# sweeps/cpu-squad-v2.toml does for ../shared/data's subsets).
# Budget cut to fit a 3-hour session on 2 CPU cores: 2 epochs, batch 16, lr 1e-4 (teacher and student),
# 50 warm-up steps, and one dev evaluation after training (the reference: 3 epochs at batch 8, lr 5e-5 /
# 3e-5, evaluation every epoch). Max length 384, doc stride 128 as the reference. Resumable.
#   usage: bash scripts/reproduce_squad_cpu.sh <data-dir> [results-dir] [tasks] [methods]
set -euo pipefail
data=${1:?usage: reproduce_squad_cpu.sh <data-dir> [results-dir] [tasks] [methods]}
results=${2:-results}
tasks=${3:-squad}
methods=${4:-"kd finetune ted"}
for task in $tasks; do
  for method in $methods; do
    distillbench run --method "$method" --task "$task" --seed 42 --data-dir "$data" --results-dir "$results" \
      --no-progress --epochs 2 --set batch_size=16 --set learning_rate=1e-4 --set teacher_learning_rate=1e-4 \
      --set warmup_steps=50 --set eval_strategy=end --set group_by_length=true  # as its records were made
  done
done
