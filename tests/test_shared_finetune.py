"""A run of the label fine-tune method is the cached student-finetune stage that TED's Stage II starts
from: built once per seed, whichever runs first, and the same student as the distillation path trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from distillbench.config import RunConfig, TrainConfig
from distillbench.harness import Paths, Runner, plan_run
from distillbench.predictions import load_predictions


def runner(tiny_bert, glue_dir, tmp_path, method: str, results: str = "results", **kwargs) -> Runner:
    cfg = TrainConfig(max_steps=4, teacher_max_steps=2, batch_size=8, logging_steps=1, save_steps=2)
    config = RunConfig(method=method, task="mrpc", teacher=str(tiny_bert), data_dir=str(glue_dir), seed=3, train=cfg)
    paths = Paths(tmp_path / results, tmp_path / "out" / f"{method}-{results}", tmp_path / "cache", show_progress=False)
    return Runner(plan_run(config, paths), **kwargs)


def test_finetune_run_reads_the_stage_ted_built(tiny_bert, glue_dir, tmp_path):
    ted = runner(tiny_bert, glue_dir, tmp_path, "ted").run()
    assert ted["stages"]["student-finetune"]["built_here"]
    finetune = runner(tiny_bert, glue_dir, tmp_path, "finetune").run()
    stage = finetune["stages"]["student-finetune"]
    assert not stage["built_here"] and stage["key"] == ted["stages"]["student-finetune"]["key"]
    assert finetune["metrics"] == ted["stages"]["student-finetune"]["metrics"]
    assert [e["step"] for e in finetune["epochs"]] and finetune["train_runtime_s"] is not None
    assert (tmp_path / "out" / "finetune-results" / "student" / "model.safetensors").is_file()
    # its predictions are the stage's, published under the run's name (load_predictions checks the sha256)
    assert finetune["predictions"]["path"] == f"predictions/{Path(finetune['_path']).stem}.npz"
    stored = load_predictions(finetune, tmp_path / "results")
    assert sorted(stored) == finetune["predictions"]["evaluations"] and stored


def test_finetune_first_then_ted_reuses_it_and_equals_the_distillation_path(tiny_bert, glue_dir, tmp_path):
    finetune = runner(tiny_bert, glue_dir, tmp_path, "finetune").run()
    assert finetune["stages"]["student-finetune"]["built_here"]
    ted = runner(tiny_bert, glue_dir, tmp_path, "ted").run()
    assert not ted["stages"]["student-finetune"]["built_here"]
    # a callback (as a tuning trial's pruner) takes the ordinary distillation path: the same student
    trained = runner(tiny_bert, glue_dir, tmp_path, "finetune", "elsewhere", callbacks=(TrainerCallback(),)).run()
    assert "student-finetune" not in trained["stages"]
    assert trained["metrics"] == finetune["metrics"]
    ours = load_predictions(finetune, tmp_path / "results")
    theirs = load_predictions(trained, tmp_path / "elsewhere")
    assert sorted(ours) == sorted(theirs)
    for label in ours:
        assert ours[label].keys() == theirs[label].keys()
        for name in ours[label]:
            np.testing.assert_array_equal(ours[label][name], theirs[label][name])
