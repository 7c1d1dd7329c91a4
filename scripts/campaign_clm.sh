#!/usr/bin/env bash
# Issue 31's causal-LM campaign, resumable: the stand-in teacher (built by the first cell if missing), then
# seed by seed the five methods of sweeps/cpu-clm.toml, so that an interrupted campaign leaves whole seeds.
# Needs an editable install from a checkout (records name its commit):
#   DISTILLBENCH_DATA=../shared/data nohup bash scripts/campaign_clm.sh > clm-campaign.log 2>&1 &
set -euo pipefail
for seed in ${SEEDS:-1 2 3}; do
  distillbench sweep --file sweeps/cpu-clm.toml --seeds "$seed" --no-progress || true  # a failed cell is reported; the next still run
done
