"""Budget accounting: the student's labelled examples, optimizer steps, teacher forwards and FLOPs,
checked against counts done by hand for the shapes of the campaign's records and a real tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from conftest import tiny_run_args
from distillbench.budget import count, forward_gflops, training_flops, with_flops
from distillbench.cli import main

N, BATCH = 3668, 32  # MRPC's training set and batch: 115 steps per epoch


def ted_record() -> dict:
    """The shape of a TED record of the campaign: a cached fine-tuned student, two filter stages (the
    teacher's read a feature cache), then 3 epochs of distillation from the teacher-output cache."""
    filters = {"epochs": 3.0, "batch_size": BATCH, "max_steps": -1}
    return {
        "role": "student",
        "train": {"batch_size": BATCH, "epochs": 3.0, "max_steps": -1},
        "data": {"train_examples": N},
        "loss_terms": {"loss": 1.0, "loss/task": 0.5, "loss/kd": 0.2, "loss/mse": 0.3},
        "teacher": {"key": "mrpc-teacher-finetune-x"},
        "teacher_cache": {"examples": N},
        "model": {"student_start": "finetuned"},
        "stages": {
            "student-finetune": {"settings": {"epochs": 3.0, "max_steps": -1, "train": {"batch_size": BATCH}}},
            "teacher-finetune": {"settings": {"epochs": 3.0}},
            "ted-filters-student": {
                "settings": {**filters, "base": "mrpc-student-finetune-a"},
                "loss_terms": {"loss/filter_task": 0.5},
                "read_cache": "mrpc-b",
            },
            "ted-filters-teacher": {
                "settings": {**filters, "base": "mrpc-teacher-finetune-x"},
                "loss_terms": {"loss/filter_task": 0.5},
                "read_cache": "mrpc-c",
            },
        },
    }


def test_ted_counts_its_fine_tuned_start_and_its_filter_stages():
    budget = count(ted_record())
    # labels: fine-tune 3 ep + student filters 3 ep + distillation 3 ep; the teacher's filters are not the student's
    assert budget["student_labelled_examples"] == 9 * N
    assert (
        budget["student_optimizer_steps"] == 345 + 345
    )  # fine-tune and distillation (the filter stage trains filters)
    assert budget["teacher_forwards"] == N + N  # the teacher's filter stage and the distillation: one cached pass each
    assert [s["stage"] for s in budget["stages"]] == [
        "student-finetune",
        "ted-filters-student",
        "ted-filters-teacher",
        "distillation",
    ]


def test_kd_live_teacher_forwards_every_epoch_and_an_ensemble_each_member():
    record = ted_record() | {"stages": {}, "teacher_cache": None}
    assert count(record)["teacher_forwards"] == 3 * N
    assert count(record)["student_labelled_examples"] == 3 * N and count(record)["student_optimizer_steps"] == 345
    ensemble = record | {"teacher": {"members": [{}, {}, {}]}}
    assert count(ensemble)["teacher_forwards"] == 9 * N
    assert count(record | {"teacher": None})["teacher_forwards"] == 0
    bounded = record | {"train": {"batch_size": BATCH, "epochs": 3.0, "max_steps": 10}}
    assert count(bounded)["student_optimizer_steps"] == 10 and count(bounded)["student_labelled_examples"] == 320


def test_training_flops_by_hand():
    budget = count(ted_record() | {"stages": {}, "teacher_cache": None})
    assert training_flops(budget, 0.5, 1.0) == pytest.approx((3 * 0.5 * 3 * N + 1.0 * 3 * N) * 1e9)
    assert training_flops(budget, 0.5, None) is None  # a teacher's cost unknown: no estimate rather than a low one
    ted = count(ted_record())
    s, t, extra, length = 0.5, 1.0, 1000, 50
    per_extra = 2 * extra * length / 1e9
    expected = (
        3 * (s + per_extra) * 3 * N  # fine-tune
        + s * N
        + 3 * per_extra * 3 * N  # student filters: one cached forward pass, filters trained 3 epochs
        + t * N
        + 3 * per_extra * 3 * N  # teacher filters
        + 3 * (s + per_extra) * 3 * N
        + t * N  # distillation, teacher from its cache
    )
    assert training_flops(ted, s, t, extra, length) == pytest.approx(expected * 1e9)
    assert count({"role": "teacher"}) == {}


def test_an_on_policy_method_counts_its_sampled_rows_by_hand():
    """GKD at λ = 0.5 drawing 96-token rows where a typical row has 48: half the distillation's rows are
    generated (≈ 1 student forward over their tokens), trained on (3 ×) and scored by the teacher."""
    budget = count(ted_record() | {"stages": {}, "teacher_cache": None})
    costs = {"gflops_per_example": {"student": 0.5, "teacher": 1.0}, "typical_length": 48, "extra_params": 0}
    sampled = with_flops(budget | costs | {"sampling": {"share": 0.5, "tokens_per_row": 96}})
    plain = with_flops(budget | costs)
    rows = round(0.5 * 3 * N)
    assert sampled["sampled_rows"] == rows and sampled["teacher_forwards"] == plain["teacher_forwards"] + rows
    extra = rows * 2 * ((1 + 3) * 0.5 + 1.0) * 1e9
    assert sampled["training_flops"] == pytest.approx(plain["training_flops"] + extra)


def test_a_run_records_its_budget(tiny_bert, glue_dir, workdir):
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-cache", "off")) == 0
    record = json.loads(next((workdir / "results" / "runs").glob("mrpc-kd-*.json")).read_text())
    budget = record["budget"]
    assert budget["student_optimizer_steps"] == 3 and budget["student_labelled_examples"] == 3 * 8
    assert budget["teacher_forwards"] == 3 * 8
    costs = budget["gflops_per_example"]
    assert 0 < costs["student"] < costs["teacher"]  # the student is half the teacher's layers
    assert budget["training_flops"] == pytest.approx(with_flops(budget)["training_flops"])
    assert budget["training_flops"] == pytest.approx((3 * costs["student"] * 24 + costs["teacher"] * 24) * 1e9)


def test_table_shows_the_budget_the_leaderboard_counts(tiny_bert, glue_dir, workdir, capsys):
    """A stored budget counted before a counting fix: `table` recounts it as the leaderboard does."""
    from distillbench.efficiency import fill_budgets
    from distillbench.experiments import flops_text
    from distillbench.selection import collect

    # whole epochs and two seeds: a bounded or single run goes to the history, which shows no FLOPs
    args = tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-cache", "off")
    for bound in ("--max-steps", "teacher_max_steps=3"):
        at = args.index(bound) - (bound != "--max-steps")  # the flag and its value
        del args[at : at + 2]
    for seed in ("1", "2"):
        assert main([*args, "--epochs", "1", "--seed", seed]) == 0
    path = sorted((workdir / "results" / "runs").glob("mrpc-kd-seed1-*.json"))[0]
    record = json.loads(path.read_text())
    record["budget"]["training_flops"] = 1.0  # stale: the record is read, never trusted, for this count
    path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["table", "--results-dir", "results", "--include-bounded", "--include-dirty"]) == 0
    shown = capsys.readouterr().out
    records = collect(workdir / "results", include_dirty=True, include_bounded=True).records
    fill_budgets(records, workdir / "results")  # as the leaderboard's reading does
    read = next(r for r in records if r.get("role") != "teacher" and r["seed"] == 1)
    assert read["budget"]["training_flops"] == pytest.approx(with_flops(count(read) | read["budget"])["training_flops"])
    assert read["budget"]["training_flops"] > 1.0
    assert f"1 ep · {flops_text([read['budget']['training_flops']])}" in shown  # not the mean with a stale 1.0
    # the terminal explains its columns under the table, as the leaderboard's legend does
    flat = " ".join(shown.split())
    assert "n: seeds behind each score" in flat and "labels · train FLOPs: the labelled epochs" in flat


def test_controls_start_where_ted_does_are_labelled_and_count_the_head_start(tiny_bert, glue_dir, workdir):
    """KD, LWD or fine-tuning from TED's fine-tuned student: a row of its own, its budget with the head start."""
    from distillbench.labels import method_label

    flags = ["--teacher", str(tiny_bert), "--data-dir", str(glue_dir), "--no-progress", "--epochs", "1"]
    flags += ["--set", "batch_size=8", "--set", "eval_batch_size=16", "--set", "logging_steps=1", "--teacher-seed", "1"]
    for method, extra in (("finetune", ["--set", "student_start=finetuned"]), ("ted", []), ("finetune", [])):
        assert main(["run", "--method", method, "--task", "mrpc", *flags, *extra]) == 0
    runs = (workdir / "results" / "runs").glob("mrpc-*.json")
    students = [json.loads(p.read_text()) for p in runs]
    records = {method_label(r): r for r in students if r["role"] == "student"}
    control, ted, plain = records["finetune (from fine-tuned)"], records["ted"], records["finetune"]
    # the plain fine-tune run is the cached stage TED started from, read back: its epoch counts once
    assert "student-finetune" in plain["stages"] and plain["budget"]["student_labelled_examples"] == 48
    assert method_label(control) == "finetune (from fine-tuned)" and method_label(ted) == "ted"
    # the cached fine-tune stage (1 epoch, 6 steps) then 1 epoch more: TED's labelled budget without a teacher
    assert control["budget"]["student_labelled_examples"] == 2 * 48
    assert control["budget"]["student_optimizer_steps"] == 12 and control["budget"]["teacher_forwards"] == 0
    assert control["stages"]["student-finetune"]["key"] == ted["stages"]["student-finetune"]["key"]
    assert ted["budget"]["student_labelled_examples"] == 3 * 48  # fine-tune, student filters, distillation


def test_reading_recounts_a_stored_budget_and_keeps_its_measured_costs(tmp_path):
    """A counting fix reaches records already written: the counts come from the record's fields again."""
    from distillbench.efficiency import fill_budgets

    record = ted_record() | {"stages": {"student-finetune": ted_record()["stages"]["student-finetune"]}}
    record |= {"teacher": None, "teacher_cache": None, "model": {"student_start": "pretrained"}}
    stored = {"student_labelled_examples": 6 * N, "gflops_per_example": {"student": 0.5}, "typical_length": 50}
    record["budget"] = stored | {"extra_params": 0, "stages": [], "training_flops": 1.0}
    fill_budgets([record], tmp_path)
    assert record["budget"]["student_labelled_examples"] == 3 * N  # the run is its fine-tune stage
    assert record["budget"]["training_flops"] == pytest.approx(3 * 0.5 * 3 * N * 1e9)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_forward_gflops_counts_every_matmul_of_a_tiny_bert(device):
    """Against a hand count: per layer Q, K, V, output (4 · 2Lh²), scores and weighted values (2 · 2L²h),
    the feed-forward pair (2 · 2Lhi); then the pooler and the classifier on one token. The batch comes
    from the collator on the CPU: on a GPU the count must move it (the GPU check once failed there)."""
    length, hidden, inner, labels = 16, 32, 64, 3
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=inner,
        max_position_embeddings=64,
        num_labels=labels,
    )
    model = BertForSequenceClassification(config).to(device)
    batch = {
        "input_ids": torch.randint(0, 100, (1, length)),
        "attention_mask": torch.ones(1, length, dtype=torch.long),
        "labels": torch.tensor([0]),
    }
    layer = 4 * 2 * length * hidden**2 + 2 * 2 * length**2 * hidden + 2 * 2 * length * hidden * inner
    hand = 2 * layer + 2 * hidden**2 + 2 * hidden * labels
    assert forward_gflops(model, batch) * 1e9 == hand
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored as found


def test_reading_counts_the_sampled_rows_of_an_on_policy_record_written_without_them(tmp_path):
    """A GKD record whose budget predates sampled rows: reading adds them from its stored hyper-parameters."""
    from distillbench.efficiency import fill_budgets

    record = ted_record() | {"stages": {}, "teacher_cache": None, "method": "gkd"}
    record["hparams"] = {"lmbda": 0.25, "prompt_tokens": 32, "max_new_tokens": 16}
    costs = {"gflops_per_example": {"student": 0.5, "teacher": 1.0}, "typical_length": 48, "extra_params": 0}
    record["budget"] = costs | {"stages": [], "training_flops": 1.0}
    fill_budgets([record], tmp_path)
    assert record["budget"]["sampling"] == {"share": 0.25, "tokens_per_row": 48}
    assert record["budget"]["sampled_rows"] == round(0.25 * 3 * N)
