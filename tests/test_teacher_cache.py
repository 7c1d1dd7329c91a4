"""Teacher-output cache: the loss a method sees is the same with the cache as with the live teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from conftest import tiny_run_args
from distillbench.cli import main
from distillbench.config import RunConfig, TrainConfig
from distillbench.distiller import Distiller
from distillbench.errors import UserError
from distillbench.harness import Paths, Runner, plan_run
from distillbench.method import EXAMPLE_INDEX
from distillbench.models import build_student, load_for_task
from distillbench.teacher_cache import with_index


def make_runner(tiny_bert, glue_dir, tmp_path, method: str, task: str = "mrpc", options=None, **train) -> Runner:
    """A two-step run; the cache is forced on (``auto`` would skip it for so short a run) unless given."""
    train.setdefault("teacher_cache", "on")
    cfg = TrainConfig(max_steps=2, teacher_max_steps=2, batch_size=8, logging_steps=1, **train)
    config = RunConfig(
        method=method, task=task, teacher=str(tiny_bert), data_dir=str(glue_dir), train=cfg, task_options=options or {}
    )
    paths = Paths(tmp_path / "results", tmp_path / "out", tmp_path / "cache", show_progress=False)
    return Runner(plan_run(config, paths))


def distillers(runner: Runner):
    """(live, cached) Distillers sharing one student, teacher and method, and the cache they read."""
    method, task = runner.plan.method, runner.task
    method.setup({stage.name: runner.stages.method_stage(stage) for stage in method.stages()})
    teacher_dir, info = runner.stages.finetuned("teacher")
    teacher = load_for_task(str(teacher_dir), task.model_class, task.model_kwargs(), False)
    student = build_student(
        runner.plan.student_spec, runner.plan.teacher_source, task.model_class, task.model_kwargs(), False
    )
    cache = runner.caches.for_teacher(teacher, info)
    assert cache is not None
    live = Distiller(student, teacher, method, task).train()
    cached = Distiller(student, teacher, method, task, cache).train()
    return live, cached, cache


def batch_of(runner: Runner, rows: list[int], max_length: int | None = None) -> dict[str, torch.Tensor]:
    train = with_index(runner.data.splits["train"])
    features = [train[i] for i in rows]
    if max_length is None:
        return runner.task.collator(runner.data.tokenizer)(features)
    return DataCollatorWithPadding(runner.data.tokenizer, padding="max_length", max_length=max_length)(features)


def loss_of(distiller: Distiller, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same student dropout masks in both passes
    out = distiller(**dict(batch))
    return {"loss": out["loss"], **out["terms"]}


@pytest.mark.parametrize("method", ["kd", "lwd", "ted"])
def test_cached_loss_is_bit_identical_to_the_live_teacher_on_the_batch_it_was_built_from(
    tiny_bert, glue_dir, tmp_path, method
):
    runner = make_runner(tiny_bert, glue_dir, tmp_path, method)
    live, cached, cache = distillers(runner)
    rows = list(range(len(runner.data.splits["train"])))  # the build ran one batch of every row (eval batch 128)
    length = cache.meta["max_length"] if cache.meta["layers"] else None
    batch = batch_of(runner, rows, length)
    expected, got = loss_of(live, batch), loss_of(cached, batch)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.parametrize("method", ["kd", "lwd", "ted"])
def test_cached_loss_matches_the_live_teacher_under_dynamic_padding(tiny_bert, glue_dir, tmp_path, method):
    runner = make_runner(tiny_bert, glue_dir, tmp_path, method)
    live, cached, _ = distillers(runner)
    batch = batch_of(runner, [3, 7, 11, 20])  # padded only to its own longest row
    expected, got = loss_of(live, batch), loss_of(cached, batch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_qa_start_end_logits_are_cached_per_token(tiny_bert, squad_dir, tmp_path):
    options = {"doc_stride": 16}
    runner = make_runner(tiny_bert, squad_dir, tmp_path, "kd", "squad", options, max_seq_length=48)
    live, cached, cache = distillers(runner)
    assert cache.meta["per_token_distill"] and cache.meta["distill"] == 2
    batch = batch_of(runner, [0, 2, 5])
    expected, got = loss_of(live, batch), loss_of(cached, batch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("dtype", "bound", "rtol"), [("float16", 1e-2, 1e-3), ("bfloat16", 5e-2, 1e-2)])
def test_half_precision_cache_records_its_rounding_error_and_stays_close(
    dtype, bound, rtol, tiny_bert, glue_dir, tmp_path
):
    runner = make_runner(tiny_bert, glue_dir, tmp_path, "lwd", teacher_cache_dtype=dtype)
    live, cached, cache = distillers(runner)
    assert cache.meta["dtype"] == dtype
    assert 0 < cache.meta["max_abs_rounding_error"] < bound
    # the stored rows are the teacher's states rounded to the dtype: exactly what torch's own cast gives
    index = torch.tensor([0, 1])
    stored = cache.lookup(index, 8, torch.device("cpu")).hidden_states[cache.meta["layers"][0]]
    assert torch.equal(stored, stored.to(getattr(torch, dtype)).float())
    batch = batch_of(runner, [0, 1, 2, 3])
    torch.testing.assert_close(loss_of(cached, batch)["loss"], loss_of(live, batch)["loss"], rtol=rtol, atol=1e-4)


def test_index_column_never_reaches_the_models(tiny_bert, glue_dir, tmp_path):
    runner = make_runner(tiny_bert, glue_dir, tmp_path, "kd")
    live, cached, _ = distillers(runner)
    batch = batch_of(runner, [0, 1])
    assert EXAMPLE_INDEX in batch
    received = []
    for model in (live.student, live.teacher):
        model.register_forward_pre_hook(lambda _m, _a, kwargs: received.append(set(kwargs)), with_kwargs=True)
    for distiller in (live, cached):  # live: student and teacher run; cached: the student only
        assert torch.isfinite(loss_of(distiller, batch)["loss"])
    assert len(received) == 3
    assert all(EXAMPLE_INDEX not in keys and "input_ids" in keys for keys in received)


def test_cache_is_built_once_and_reused_by_later_runs(tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-cache", "on")) == 0
    first = json.loads(next((workdir / "results" / "runs").glob("mrpc-kd-*.json")).read_text())
    assert "output cache" in capsys.readouterr().err
    meta = first["teacher_cache"]
    assert meta["examples"] == first["data"]["train_examples"] and meta["layers"] == []
    assert first["train"]["teacher_cache"] == "on" and first["train"]["group_by_length"] is False
    folder = workdir / "cache" / "teacher-outputs" / meta["key"]
    built = (folder / "meta.json").stat().st_mtime_ns
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-cache", "on", "--seed", "7")) == 0
    assert (folder / "meta.json").stat().st_mtime_ns == built
    # the same experiment (the cache is an execution switch), trained afresh in its own output folder
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-cache", "off", "--output-dir", "live")) == 0
    off = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("mrpc-kd-*.json")]
    live = next(r for r in off if r["train"]["teacher_cache"] == "off")
    assert live["teacher_cache"] is None
    for name, value in first["metrics"].items():
        assert live["metrics"][name] == pytest.approx(value, abs=1e-4)


def test_pretrain_refuses_a_cache_because_masks_change_every_step(tiny_bert, corpus, tmp_path):
    cfg = TrainConfig(max_steps=2, teacher_cache="on")
    config = RunConfig(method="kd", task="pretrain", teacher=str(tiny_bert), train=cfg)
    config.task_options = {"corpus": str(corpus)}
    with pytest.raises(UserError, match="randomises its training inputs"):
        plan_run(config, Paths(tmp_path / "r", None, tmp_path / "c"))


@pytest.mark.parametrize(("grouped", "sampler"), [(None, RandomSampler), (True, LengthGroupedSampler)])
def test_training_batches_are_random_by_default_and_length_grouped_when_asked(
    tiny_bert, glue_dir, tmp_path, grouped, sampler
):
    """Length grouping changed results (the MRPC teacher lost four points): an option, never the default."""
    extra = {} if grouped is None else {"group_by_length": grouped}
    runner = make_runner(tiny_bert, glue_dir, tmp_path, "finetune", teacher_cache="auto", **extra)
    trainer = runner.training.train(
        build_student(
            runner.plan.student_spec,
            runner.plan.teacher_source,
            runner.task.model_class,
            runner.task.model_kwargs(),
            False,
        ),
        tmp_path / "t",
        runner.plan.config.train,
        evaluate=False,
    )
    assert type(trainer._get_train_sampler()) is sampler


class LengthEcho(torch.nn.Module):
    """Predicts each row's length: shows the order in which evaluation saw the rows."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, labels=None):
        lengths = attention_mask.sum(-1, keepdim=True).float() + self.weight
        return {"loss": lengths.sum() * 0, "logits": lengths}


def test_evaluation_keeps_dataset_order_when_training_is_length_grouped(tmp_path):
    """SQuAD scores predictions by position: a length-grouped eval sampler would pair the wrong windows."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainingArguments

    from distillbench.distiller import DistillTrainer

    lengths = [3, 17, 5, 11, 2, 19, 7, 13, 4, 16, 9, 1] * 4
    rows = Dataset.from_dict({"input_ids": [[1] * n for n in lengths], "labels": list(range(len(lengths)))})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "a": 1})))
    tokenizer.pad_token = "[PAD]"
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none", use_cpu=True,
        train_sampling_strategy="group_by_length",
    )  # fmt: skip
    trainer = DistillTrainer(model=LengthEcho(), args=args, data_collator=DataCollatorWithPadding(tokenizer))
    predictions = trainer.predict(rows).predictions
    assert predictions[:, 0].tolist() == lengths


def test_estimated_size_counts_rows_longest_row_width_layers_and_dtype():
    from distillbench.teacher_cache import CacheSpec, estimated_bytes

    assert estimated_bytes([3, 5, 4], CacheSpec((2, 4)), hidden_size=8) == 3 * 5 * 8 * 2 * 4
    assert estimated_bytes([3, 5, 4], CacheSpec((2,), "float16", per_token_distill=True), 8) == 3 * 5 * (8 + 2) * 2
    assert estimated_bytes([3, 5], CacheSpec(()), 8) == 0  # class logits only: negligible
    assert estimated_bytes([3, 5, 4], CacheSpec((2, 4), first_position_only=True), 8) == 3 * 1 * 8 * 2 * 4


def test_auto_skips_a_cache_over_the_disk_limit_and_on_builds_it(tiny_bert, glue_dir, tmp_path, capsys):
    runner = make_runner(tiny_bert, glue_dir, tmp_path, "lwd", teacher_cache="auto", teacher_cache_max_gb=1e-9)
    runner.plan.config.train.max_steps = 6  # a full pass over the 48 rows: only the size limit stands in the way
    teacher_dir, info = runner.stages.finetuned("teacher")
    teacher = load_for_task(str(teacher_dir), runner.task.model_class, runner.task.model_kwargs(), False)
    assert runner.caches.for_teacher(teacher, info) is None
    assert "teacher outputs computed on the fly, not cached" in capsys.readouterr().err
    runner.plan.config.train.teacher_cache = "on"
    assert runner.caches.for_teacher(teacher, info) is not None


def test_auto_skips_a_cache_a_short_run_would_not_repay(tiny_bert, glue_dir, tmp_path, capsys):
    runner = make_runner(tiny_bert, glue_dir, tmp_path, "kd", teacher_cache="auto")  # 2 steps × 8 rows < 48
    teacher_dir, info = runner.stages.finetuned("teacher")
    teacher = load_for_task(str(teacher_dir), runner.task.model_class, runner.task.model_kwargs(), False)
    assert runner.caches.for_teacher(teacher, info) is None
    assert "this short run reads fewer training rows than caching the whole set would" in capsys.readouterr().err
    runner.plan.config.train.max_steps = 6  # 48 rows: one teacher pass either way, and later epochs/runs gain
    assert runner.caches.for_teacher(teacher, info) is not None


def test_ted_stage_one_learns_the_same_filters_from_cached_features(tiny_bert, glue_dir, workdir, monkeypatch):
    """Stage I's backbone is frozen and in eval mode, so reading its states from the output cache must
    train the same filters and heads as running it live (to float summation order)."""
    from safetensors.torch import load_file

    states, records = {}, {}
    for mode in ("off", "on"):
        monkeypatch.setenv("DISTILLBENCH_CACHE", str(workdir / f"cache-{mode}"))
        args = tiny_run_args(tiny_bert, glue_dir, "ted", "mrpc", "--teacher-cache", mode)
        assert main([*args, "--results-dir", f"results-{mode}", "--output-dir", f"out-{mode}"]) == 0
        stages = workdir / f"cache-{mode}" / "stages"
        states[mode] = {
            p.parent.name.rsplit("-", 1)[0]: load_file(p) for p in stages.glob("*ted-filters*/*.safetensors")
        }
        (path,) = [p for p in (workdir / f"results-{mode}" / "runs").glob("*ted*.json")]
        records[mode] = json.loads(path.read_text())
    assert sorted(states["on"]) == ["mrpc-ted-filters-student", "mrpc-ted-filters-teacher"]
    for stage, tensors in states["off"].items():
        for name, tensor in tensors.items():
            torch.testing.assert_close(states["on"][stage][name], tensor, atol=1e-6, rtol=0)
    for stage in ("ted-filters-teacher", "ted-filters-student"):
        assert records["off"]["stages"][stage]["read_cache"] is None
        assert records["on"]["stages"][stage]["read_cache"]
    # Stage I's [CLS] heads read one position: its caches store only that; Stage II reads every position
    cache = workdir / "cache-on" / "teacher-outputs"
    stage_one = cache / records["on"]["stages"]["ted-filters-teacher"]["read_cache"]
    stage_two = cache / records["on"]["teacher_cache"]["key"]
    assert json.loads((stage_one / "meta.json").read_text())["first_position_only"] is True
    assert next(stage_one.glob("hidden_*.npy")).stat().st_size < next(stage_two.glob("hidden_*.npy")).stat().st_size
    assert np.load(next(stage_one.glob("hidden_*.npy"))).shape[1] == 1
