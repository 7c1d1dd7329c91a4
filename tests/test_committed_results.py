"""The committed results are what their stored predictions say: every figure a record holds is recomputed
from the predictions file it references (the sha256 checked on the way), at its final and best epoch, and the
SQuAD v2.0 records are rescored by the official evaluate-v2.0.py when ../shared has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_squad import OFFICIAL, SHARED_SQUAD, official

from distillbench.labels import score_of
from distillbench.predictions import evaluation_of
from distillbench.records import read_records
from distillbench.task import get_task

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
RECORDS = [r for r in read_records(RESULTS) if r.get("kind") == "run" and r.get("predictions")]


def test_the_committed_campaign_stores_predictions():
    assert {r["task"] for r in RECORDS} >= {"mrpc", "stsb", "squad_v2"}


@pytest.mark.parametrize("record", RECORDS, ids=[r["run_id"] for r in RECORDS])
@pytest.mark.parametrize("score", ["final", "best"])
def test_every_figure_is_recomputed_from_its_stored_predictions(record, score):
    task = get_task(record["task"])(None)
    arrays = evaluation_of(record, RESULTS, score)
    everything = np.arange(len(next(iter(arrays.values()))))[None, :]
    recorded = score_of(record, score)
    for metric in task.paper_metrics:
        recomputed = float(task.metric_rows(arrays, everything, metric.split("/")[-1])[0])
        assert recomputed == pytest.approx(recorded[metric], rel=1e-6, abs=1e-9), metric


def squad_v2_records() -> list[dict]:
    return [r for r in RECORDS if r["task"] == "squad_v2"]


@pytest.mark.skipif(not (OFFICIAL / "evaluate-v2.0.py").is_file(), reason="../shared/data not present")
@pytest.mark.parametrize("record", squad_v2_records(), ids=[r["run_id"] for r in squad_v2_records()])
def test_squad_v2_records_rescore_with_the_official_script(record, tmp_path):
    arrays = evaluation_of(record, RESULTS)
    ids = arrays["id"].tolist()
    predictions = dict(zip(ids, arrays["answer"].tolist(), strict=True))
    na_probs = dict(zip(ids, arrays["na_prob"].tolist(), strict=True))
    dev_file = SHARED_SQUAD / next(f for f in record["data"]["files"] if "/dev-" in f).removeprefix("data:")
    scored = official("evaluate-v2.0.py", dev_file, predictions, tmp_path, na_probs)
    assert scored["total"] == len(ids)
    assert scored == pytest.approx({k: record["metrics"][k] for k in scored})


@pytest.mark.parametrize("teacher", ["minilm-l6 (seed 1)", "minilm-l6 (seed 1, settings from its study)"])
def test_markers_do_not_depend_on_the_bootstrap_seed(teacher):
    """Every marker of each campaign's experiment (three seeds on length-grouped batches; five seeds from
    the studied teacher, with the controls) is the same under another bootstrap seed: a p near the
    threshold is recomputed with ten times the resamples, and one still within its Monte-Carlo error
    of 0.05 earns no marker (STS-B KD against fine-tuning flipped with the seed before)."""
    from distillbench.experiments import experiment_significance, group_experiments, ranked
    from distillbench.selection import select

    experiments = ranked(group_experiments(select(read_records(RESULTS)).records))
    campaign = next(e for e in experiments if e.tasks == ["mrpc", "stsb"] and e.teacher == teacher)
    verdicts = []
    for seed in (0, 1):
        marks = experiment_significance(campaign, "final", seed=seed)
        verdicts.append({(f.key, f.comparison.baseline): (f.significant, f.better) for f in marks.findings})
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) >= 20
