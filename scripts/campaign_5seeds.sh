#!/usr/bin/env bash
# The 5-seed campaign of issue 30, resumable: per task (MRPC first), the teacher study, then seed by seed the
# six methods (sweeps/cpu-glue-5seeds.toml) and the three controls (sweeps/cpu-glue-controls.toml), so that
# an interrupted campaign leaves whole seeds. Every step skips what is already recorded or cached.
# TASKS and SEEDS narrow it (e.g. TASKS=stsb SEEDS="1 2"), so two lanes can run side by side.
#   DISTILLBENCH_DATA=../shared/data nohup bash scripts/campaign_5seeds.sh > campaign.log 2>&1 &
# Run it with distillbench installed editable from a git checkout (`pip install -e .`): records made by a
# copied install carry no git commit, and the leaderboard leaves such records out.
set -euo pipefail
declare -A warmup=([mrpc]=35 [stsb]=108)  # 10 % of a full-train teacher's steps (3 epochs)
for task in ${TASKS:-mrpc stsb}; do
  # A committed study is not redone: the sweeps read its choice and train the chosen teacher if it is not cached.
  [ -f "results/studies/teacher-$task.json" ] || distillbench teacher-study --task "$task" --teacher-seed 1 \
    --epochs 3 --results-dir results --no-progress \
    --grid teacher_learning_rate=2e-5,3e-5,5e-5 --grid "teacher_warmup_steps=0,${warmup[$task]}"
  for seed in ${SEEDS:-1 2 3 4 5}; do
    for file in sweeps/cpu-glue-5seeds.toml sweeps/cpu-glue-controls.toml; do
      distillbench sweep --file "$file" --tasks "$task" --seeds "$seed" --no-progress || true  # a failed cell is reported; the next still run
    done
  done
done
