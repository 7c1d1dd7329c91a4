#!/usr/bin/env bash
# The CPU evidence for continual pre-training: WikiText-2 (raw test split, the default corpus) distilled
# from the 6-layer MiniLM teacher into a student copied from teacher layers 1,3,5, seed 42, a bounded
# budget of 60 steps of batch 32 × 128 tokens per stage (the teacher's MLM head also trains 60 steps,
# at lr 5e-4, backbone frozen); each pre-trained student is then fine-tuned on MRPC for 3 epochs, as
# the task-specific MRPC records. Length grouping is off: the records predate it. Resumable.
#   usage: DISTILLBENCH_DATA=../shared/data bash scripts/reproduce_pretrain_cpu.sh [results-dir] [methods]
set -euo pipefail
results=${1:-results}
methods=${2:-"kd lwd minilm ted"}
for method in $methods; do
  distillbench run --method "$method" --task pretrain --seed 42 --max-steps 60 --results-dir "$results" \
    --set teacher_max_steps=60 --set teacher_learning_rate=5e-4 --set group_by_length=false --no-progress
  record=$(ls -t "$results"/runs/pretrain-"$method"-seed42-*.json | head -1)
  distillbench run --method finetune --task mrpc --seed 42 --epochs 3 --student "$record" \
    --results-dir "$results" --no-progress --set group_by_length=false
done
