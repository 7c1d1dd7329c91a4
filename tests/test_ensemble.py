"""Several teachers as one: the combined soft targets, the ensemble's own score, records, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import tiny_run_args
from distillbench import get_task
from distillbench.cli import main
from distillbench.ensemble import EnsembleModel
from distillbench.labels import teacher_label
from distillbench.losses import ensemble_logits, logit_kd


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.exp((x - x.max(-1, keepdims=True)) / temperature)
    return z / z.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_ensemble_logits_soften_to_the_weighted_mean_of_softened_distributions(temperature):
    rng = np.random.default_rng(0)
    members = [rng.normal(size=(5, 3)) * 3 for _ in range(3)]
    weights = [0.2, 0.3, 0.5]
    combined = ensemble_logits([torch.tensor(m) for m in members], weights, "classification", temperature)
    expected = sum(w * softmax(m, temperature) for w, m in zip(weights, members, strict=True))
    np.testing.assert_allclose(softmax(combined.numpy(), temperature), expected, rtol=1e-6)
    one = ensemble_logits([torch.tensor(members[0])], [1.0], "classification", temperature)
    np.testing.assert_allclose(softmax(one.numpy(), temperature), softmax(members[0], temperature), rtol=1e-6)


def test_ensemble_of_regressors_is_the_weighted_mean_prediction():
    members = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [6.0]])]
    combined = ensemble_logits(members, [0.25, 0.75], "regression", 2.0)
    torch.testing.assert_close(combined, torch.tensor([[2.5], [5.0]]))


def test_kd_against_an_ensemble_is_kl_to_the_mean_softened_distribution():
    """The KD term a method computes against the combined teacher equals T² · KL(p̄ ‖ p_s), with p̄ the
    teachers' mean softened distribution, computed here from the definition."""
    from types import SimpleNamespace

    from transformers import BertConfig

    from distillbench import get_method
    from distillbench.method import ModelPair, Outputs

    kd = get_method("kd")
    config = BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64)
    method = kd(kd.HParams(temperature=3.0, kl_alpha=1.0), get_task("mrpc")(None), ModelPair(config, config))
    rng = np.random.default_rng(1)
    teachers = [rng.normal(size=(4, 2)) * 2 for _ in range(3)]
    student = rng.normal(size=(4, 2))
    members = [Outputs(raw=None, distill=[torch.tensor(t, dtype=torch.float32)]) for t in teachers]
    combined = method.ensemble(members, [1 / 3] * 3)
    ours = logit_kd([torch.tensor(student, dtype=torch.float32)], combined.distill, "classification", 3.0)
    p_mean = np.mean([softmax(t, 3.0) for t in teachers], axis=0)
    p_student = softmax(student, 3.0)
    expected = 9.0 * np.mean(np.sum(p_mean * (np.log(p_mean) - np.log(p_student)), axis=-1))
    assert float(ours) == pytest.approx(expected, rel=1e-5)
    terms = method.loss(
        Outputs(raw=SimpleNamespace(loss=torch.tensor(0.0)), distill=[torch.tensor(student, dtype=torch.float32)]),
        combined,
        {},
    )
    assert float(terms["kd"]) == pytest.approx(expected, rel=1e-5)


def test_the_ensemble_model_predicts_the_mean_probability(tiny_bert):
    members = [
        AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2).eval() for _ in range(2)
    ]
    torch.manual_seed(3)
    for member in members:  # two different heads
        member.classifier.weight.data.normal_(0, 3)
    ids = torch.tensor([[2, 5, 7, 9, 3], [2, 6, 8, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        combined = EnsembleModel(members, [0.4, 0.6], "classification")(**batch).logits
        expected = 0.4 * members[0](**batch).logits.softmax(-1) + 0.6 * members[1](**batch).logits.softmax(-1)
    torch.testing.assert_close(combined.softmax(-1), expected, rtol=1e-5, atol=1e-6)


def run_ensemble(tiny_bert, glue_dir, *extra: str) -> int:
    return main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", *extra))


def records_of(workdir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workdir / "results" / "runs").glob("*.json"))]


def test_an_ensemble_of_teacher_seeds_runs_end_to_end(tiny_bert, glue_dir, workdir):
    # a high teacher learning rate (and length-grouped batches) make the two seeds' tiny teachers disagree
    # enough that the weights matter
    weights = ["--set", "teacher_weights=1,3", "--set", "teacher_learning_rate=0.01", "--set", "group_by_length=true"]
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seeds", "1,2", *weights) == 0
    found = records_of(workdir)
    teachers = sorted((r for r in found if r["role"] == "teacher"), key=lambda r: r["seed"])
    (student,) = [r for r in found if r["role"] == "student"]
    assert [r["seed"] for r in teachers] == [1, 2]  # each member is its own cached teacher stage
    ensemble = student["teacher"]
    assert ensemble["weights"] == [0.25, 0.75]
    assert [m["key"] for m in ensemble["members"]] == [r["run_id"] for r in teachers]
    assert set(student["stages"]) == {"teacher-1-finetune", "teacher-2-finetune"}
    # the ensemble's score, recomputed from the members' stored dev predictions
    arrays = [np.load(workdir / "results" / r["predictions"]["path"]) for r in teachers]
    key = next(k for k in arrays[0].files if k.endswith("/predictions"))
    mean = 0.25 * softmax(arrays[0][key]) + 0.75 * softmax(arrays[1][key])
    labels = arrays[0][key.replace("predictions", "labels")]
    expected = get_task("mrpc")(None).compute_metrics(np.log(mean), labels)
    assert ensemble["metrics"] == pytest.approx(expected)
    swapped = 0.75 * softmax(arrays[0][key]) + 0.25 * softmax(arrays[1][key])
    assert get_task("mrpc")(None).compute_metrics(np.log(swapped), labels) != pytest.approx(expected)  # it can tell
    assert teacher_label(student) == "2-teacher ensemble: tiny-bert0 (seeds 1, 2)"
    from distillbench.leaderboard import aggregate
    from distillbench.selection import collect

    records = collect(workdir / "results", include_dirty=True, include_bounded=True).records
    stats = aggregate(records)
    rows = stats[(stats["method"] == "teacher") & (stats["teacher"] == teacher_label(student))]
    assert dict(zip(rows["metric"], rows["mean"], strict=True)) == pytest.approx(expected)
    assert set(rows["n"]) == {1}  # the ensemble's own score, once
    from distillbench.report import runs_table
    from distillbench.site import provenance_of

    assert "ensemble" not in runs_table(records)  # the teacher row is derived from the student's record
    tooltip = provenance_of(records)["teacher"]
    assert tooltip.startswith(f"mrpc-kd-seed42-{student['run_id']}.json")


def test_a_member_is_the_cached_stage_of_the_single_teacher_run(tiny_bert, glue_dir, workdir):
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seed", "2") == 0
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seeds", "1,2") == 0
    student = next(r for r in records_of(workdir) if r["role"] == "student" and "members" in r["teacher"])
    assert student["stages"]["teacher-2-finetune"]["built_here"] is False
    assert student["stages"]["teacher-1-finetune"]["built_here"] is True


def test_cached_and_live_ensembles_give_the_same_run(tiny_bert, glue_dir, workdir):
    for mode in ("on", "off"):
        extra = ("--teacher-seeds", "1,2", "--teacher-cache", mode, "--output-dir", f"out-{mode}")
        assert run_ensemble(tiny_bert, glue_dir, *extra, "--results-dir", f"results-{mode}") == 0
    runs = {}
    for mode in ("on", "off"):
        (path,) = (workdir / f"results-{mode}" / "runs").glob("mrpc-kd-*.json")
        runs[mode] = json.loads(path.read_text())
    assert runs["on"]["teacher_cache"]["members"] and runs["off"]["teacher_cache"] is None
    for cached, live in zip(runs["on"]["loss_history"], runs["off"]["loss_history"], strict=True):
        assert cached["loss/kd"] == pytest.approx(live["loss/kd"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "ted", "--teacher-seeds", "1,2"], "ted reads the teacher's hidden_states"),
        (["--method", "finetune", "--teacher-seeds", "1,2"], "finetune uses no teacher"),
        (["--teacher-seeds", "1,1"], "a seed is repeated"),
        (["--teacher-seeds", "1,2", "--set", "teacher_weights=1"], "1 weights for 2 teachers"),
        (["--teacher-seeds", "1,2", "--set", "teacher_weights=1,0"], "every weight must be positive"),
        (["--teacher-seeds", "1,2", "--teacher-finetuned", "."], "--teacher-finetuned names one fine-tuned teacher"),
    ],
)
def test_what_an_ensemble_cannot_do_is_one_error_before_anything_is_written(
    extra, message, tiny_bert, glue_dir, workdir, capsys
):
    args = tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc")
    if "--method" in extra:
        args[args.index("--method") + 1] = extra[1]
        extra = extra[2:]
    if "--teacher-finetuned" in extra:
        extra = [*extra[:-1], str(tiny_bert)]
    assert main([*args, *extra]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:") and message in line
    assert not (workdir / "results").exists() and not (workdir / "cache").exists()


def test_several_teacher_models_are_an_ensemble_too(tiny_bert, glue_dir, workdir):
    assert main([*tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc"), "--teacher", f"{tiny_bert},{tiny_bert}"]) == 0
    (student,) = [r for r in records_of(workdir) if r["role"] == "student"]
    assert len(student["teacher"]["members"]) == 2 and teacher_label(student).startswith("2-teacher ensemble")


def test_compare_picks_rows_by_teacher_label(tiny_bert, glue_dir, workdir, capsys):
    """``compare kd kd --teacher ensemble --baseline-teacher …``: the same method, two teachers."""
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seeds", "1,2") == 0
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seed", "1") == 0
    capsys.readouterr()
    common = ["compare", "kd", "kd", "--task", "mrpc", "--include-dirty", "--include-bounded", "--resamples", "1000"]
    assert main([*common, "--teacher", "ensemble", "--baseline-teacher", "(seed 1)"]) == 0
    out = capsys.readouterr().out
    assert "A: teacher 2-teacher ensemble: tiny-bert0 (seeds 1, 2)" in out and "B: teacher tiny-bert0 (seed 1)" in out
    assert "over dev examples (would the gap survive another dev set?): paired bootstrap, 1 seed pair(s) [42]" in out
    assert main([*common, "--teacher", "nothing-like-this"]) == 2
    assert "teacher containing 'nothing-like-this'" in capsys.readouterr().err


def test_compare_picks_rows_by_exact_budget(tiny_bert, glue_dir, workdir, capsys):
    """``--budget "3 steps, length-grouped" --baseline-budget "3 steps"``: one method, batches grouped or not."""
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seed", "1") == 0
    assert run_ensemble(tiny_bert, glue_dir, "--teacher-seed", "1", "--set", "group_by_length=true") == 0
    capsys.readouterr()
    common = ["compare", "kd", "kd", "--task", "mrpc", "--include-dirty", "--include-bounded", "--resamples", "1000"]
    assert main([*common, "--budget", "3 steps, length-grouped", "--baseline-budget", "3 steps"]) == 0
    out = capsys.readouterr().out
    assert "A: teacher tiny-bert0 (seed 1), student" in out and "budget 3 steps, length-grouped" in out
    assert main([*common, "--budget", "3 steps"]) == 2  # the baseline side still matches both
    assert "several experiments match" in capsys.readouterr().err
    assert main([*common, "--budget", "3 ep"]) == 2
    assert "budget '3 ep'" in capsys.readouterr().err
