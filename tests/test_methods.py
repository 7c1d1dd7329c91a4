"""Method internals: layer maps, freezing in both TED stages, MiniLM's attention, declared spaces."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from distillbench import ModelPair, UserError, get_method, get_task, list_methods
from distillbench.config import RunConfig, TrainConfig, parse_overrides
from distillbench.distiller import Distiller
from distillbench.harness import Paths, Runner, plan_run
from distillbench.losses import relation_log_probs
from distillbench.methods.lwd import parse_layer_map
from distillbench.methods.ted import FilterLearner, filter_layers
from distillbench.models import QKVCapture


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def runner(tiny_bert, glue_dir, tmp_path) -> Runner:
    train = TrainConfig(
        max_steps=2,
        teacher_max_steps=2,
        batch_size=8,
        save_steps=100,
        logging_steps=1,
        learning_rate=1e-3,
        teacher_learning_rate=1e-3,
    )
    config = RunConfig(method="ted", task="mrpc", teacher=str(tiny_bert), data_dir=str(glue_dir), train=train)
    paths = Paths(
        results_dir=tmp_path / "results", output_dir=tmp_path / "out", cache_dir=tmp_path / "cache", show_progress=False
    )
    return Runner(plan_run(config, paths))


def quick(runner: Runner) -> TrainConfig:
    """Two steps at a learning rate large enough that every trained weight visibly moves."""
    return dataclasses.replace(runner.plan.config.train, learning_rate=1e-2, epochs=1, max_steps=2)


def load(folder) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)


def test_teacher_settings_ignore_student_budgets():
    cfg = TrainConfig(
        learning_rate=1e-4,
        teacher_learning_rate=2e-5,
        epochs=3,
        teacher_epochs=None,
        batch_size=16,
        warmup_steps=50,
        max_train_samples=100,
        teacher_warmup_steps=0,
    )
    teacher = cfg.for_role("teacher")
    assert (teacher.learning_rate, teacher.epochs, teacher.batch_size, teacher.warmup_steps) == (2e-5, 3, 16, 0)
    assert teacher.max_train_samples is None and cfg.for_role("student") is cfg


def test_a_student_subset_reuses_the_full_data_teacher(tiny_bert, glue_dir, workdir, capsys):
    from conftest import tiny_run_args
    from distillbench.cli import main

    assert main(tiny_run_args(tiny_bert, glue_dir, "kd")) == 0
    assert main([*tiny_run_args(tiny_bert, glue_dir, "kd"), "--set", "max_train_samples=16"]) == 0
    assert len(list((workdir / "cache" / "stages").glob("mrpc-teacher-*"))) == 1


def test_filter_and_layer_maps():
    assert filter_layers(6, 3) == [1, 3, 5]
    assert filter_layers(3, 3) == [0, 1, 2]
    assert filter_layers(12, 12) == list(range(12))
    with pytest.raises(UserError, match="cannot place 4 filters"):
        filter_layers(6, 4)
    assert parse_layer_map("uniform", 3, 6) == [1, 3, 5]
    assert parse_layer_map("0,2,5", 3, 6) == [0, 2, 5]
    with pytest.raises(UserError, match="need 3 teacher layers"):
        parse_layer_map("0,7,5", 3, 6)


def test_ted_stage_one_trains_filters_and_leaves_the_backbone_bit_identical(runner, tmp_path):
    teacher_dir, _ = runner.stages.finetuned("teacher")
    model = load(teacher_dir)
    learner = FilterLearner(model, get_task("mrpc")(None), [1, 3], output_dim=32, nonlinear=False)
    backbone, extra = snapshot(learner.backbone), snapshot(learner.extra)
    runner.training.train(learner, tmp_path / "stage1", quick(runner), evaluate=False)
    assert same(snapshot(learner.backbone), backbone)
    assert not same(
        snapshot(learner.extra["filters"]),
        {k.removeprefix("filters."): v for k, v in extra.items() if k.startswith("filters.")},
    )


def test_ted_stage_two_freezes_teacher_and_its_filters_and_trains_student_filters(runner, tmp_path):
    method = runner.plan.method
    method.setup({stage.name: runner.stages.method_stage(stage) for stage in method.stages()})
    teacher_dir, _ = runner.stages.finetuned("teacher")
    student_dir, _ = runner.stages.finetuned("student")
    teacher, student = load(teacher_dir), load(student_dir)
    before = {
        "teacher": snapshot(teacher),
        "teacher_filters": snapshot(method.modules["teacher_filters"]),
        "student": snapshot(student),
        "student_filters": snapshot(method.modules["student_filters"]),
    }
    distiller = Distiller(student, teacher, method, runner.task)
    runner.training.train(distiller, tmp_path / "stage2", quick(runner), evaluate=False)
    assert same(snapshot(teacher), before["teacher"])
    assert same(snapshot(method.modules["teacher_filters"]), before["teacher_filters"])
    assert not same(snapshot(method.modules["student_filters"]), before["student_filters"])
    assert not same(snapshot(student), before["student"])
    assert not teacher.training  # the frozen teacher never sees dropout


def test_ted_stage_two_loads_the_filters_stage_one_learned(runner):
    method = runner.plan.method
    states = {stage.name: runner.stages.method_stage(stage) for stage in method.stages()}
    method.setup(states)
    learned = states["ted-filters-student"]["filters.0.weight"]
    assert torch.equal(method.modules["student_filters"][0].weight, learned)


def test_minilm_attention_from_captured_qk_equals_eager_attention(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=2, attn_implementation="eager"
    ).eval()
    capture = QKVCapture(model)
    ids = torch.tensor([[2, 5, 7, 9, 3, 0], [2, 6, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1]
    q, k, _ = capture.collect()[-1]
    ours = relation_log_probs(q, k, model.config.num_attention_heads, mask).exp()
    assert torch.allclose(ours, eager, atol=1e-5)


def test_minilm_requires_equal_heads_and_minilmv2_does_not():
    task = get_task("mrpc")(None)
    teacher = BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=4)
    student = BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2)
    pair = ModelPair(student=student, teacher=teacher)
    with pytest.raises(UserError, match="equal attention head counts"):
        get_method("minilm")(get_method("minilm").HParams(), task, pair)
    v2 = get_method("minilmv2")
    assert v2(v2.HParams(relation_heads=8), task, pair).heads == 8
    with pytest.raises(UserError, match="not divisible by 5 relation heads"):
        v2(v2.HParams(relation_heads=5), task, pair)


@pytest.mark.parametrize("name", list_methods())
def test_declared_search_space_names_only_existing_hparams(name):
    method = get_method(name)
    trial = optuna.create_study().ask()
    assert set(method.search_space(trial)) <= set(method.hparam_fields())


@pytest.mark.parametrize("name", list_methods())
def test_set_validation_per_method(name):
    method = get_method(name)
    fields = method.hparam_fields()
    samples = {
        "float": [("0.5", 0.5), ("3", 3.0)],
        "int": [("2", 2), ("-1", -1)],
        "bool": [("true", True), ("no", False)],
    }
    samples["str"] = [("finetuned", "finetuned"), ("auto", "auto")]
    for field in fields.values():
        kind = next(k for k in samples if k in str(field.type))
        for text, value in samples[kind]:
            _, parsed, _ = parse_overrides([f"{field.name}={text}"], fields)
            assert parsed[field.name] == value and type(parsed[field.name]) is type(value), (field.name, text)
    with pytest.raises(UserError, match="unknown hyper-parameter"):
        parse_overrides(["no_such_knob=1"], fields)
    numeric = [f for f in fields.values() if "float" in str(f.type)]
    for field in numeric:
        with pytest.raises(UserError, match="expected a value of type float"):
            parse_overrides([f"{field.name}=abc"], fields)
    assert dataclasses.is_dataclass(method.HParams)


def test_best_epoch_selection_follows_the_metric_direction():
    from distillbench.history import best_epoch

    history = [{"epoch": e, "step": e * 10, "metrics": {"accuracy": a}} for e, a in ((1, 0.6), (2, 0.8), (3, 0.7))]
    assert best_epoch(history, get_task("mrpc")(None))["epoch"] == 2
    losses = [
        {"epoch": e, "step": e, "metrics": {"mlm_loss": v, "perplexity": 2.0**v}} for e, v in ((1, 5.0), (2, 3.0))
    ]
    pretrain = get_task("pretrain")
    assert pretrain.main_metric in ("mlm_loss", "perplexity") and not pretrain.greater_is_better
    assert best_epoch(losses, pretrain(None))["epoch"] == 2  # the lowest loss


def tiny_pair(student_layers: int = 2, heads: int = 4) -> ModelPair:
    teacher = BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=4, intermediate_size=64)
    student = BertConfig(
        hidden_size=32, num_attention_heads=heads, num_hidden_layers=student_layers, intermediate_size=64
    )
    return ModelPair(student=student, teacher=teacher)


@pytest.mark.parametrize("name", ["minilm", "minilmv2"])
def test_relation_loss_ignores_padding(name):
    """On a padded batch the relation loss equals that of the same examples unpadded (weighted by their
    real query positions, as the batch mean is): padding keys and queries never count."""
    from types import SimpleNamespace

    from distillbench.method import Outputs

    method_cls = get_method(name)
    method = method_cls(method_cls.HParams(), get_task("mrpc")(None), tiny_pair())
    torch.manual_seed(0)
    lengths, width = (5, 3), 32

    def outputs(states):  # one layer's Q, K, V per model
        return Outputs(raw=SimpleNamespace(loss=torch.tensor(0.0)), distill=[], qkv=[states] * 4)

    student = [torch.randn(2, 5, width) for _ in range(3)]
    teacher = [torch.randn(2, 5, width) for _ in range(3)]
    for tensors in (student, teacher):
        for t in tensors:
            t[1, 3:] = 100.0  # garbage in the padding of example 1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    padded = method.relation_loss(outputs(student), outputs(teacher), mask)
    alone = [
        method.relation_loss(
            outputs([t[i : i + 1, :n] for t in student]),
            outputs([t[i : i + 1, :n] for t in teacher]),
            torch.ones(1, n, dtype=torch.long),
        )
        for i, n in enumerate(lengths)
    ]
    expected = (lengths[0] * alone[0] + lengths[1] * alone[1]) / sum(lengths)
    torch.testing.assert_close(padded, expected, rtol=1e-5, atol=1e-6)


def test_lwd_pairs_student_layer_i_with_teacher_layer_m_of_i():
    """Student layer i (hidden_states[i + 1]) against teacher layer m(i) (hidden_states[m(i) + 1]),
    m = (1, 3) for 2 → 4 layers; states are constants so each pairing gives a different loss."""
    from types import SimpleNamespace

    from distillbench.method import Outputs

    lwd = get_method("lwd")
    method = lwd(lwd.HParams(kl_alpha=0.0, mse_alpha=1.0, projection="auto"), get_task("mrpc")(None), tiny_pair())
    method.setup({})
    assert method.layer_map == [1, 3] and "projections" not in method.modules

    def outputs(count: int) -> Outputs:
        states = tuple(torch.full((1, 3, 32), float(j)) for j in range(count + 1))
        return Outputs(raw=SimpleNamespace(hidden_states=states, loss=torch.tensor(0.0)), distill=[])

    terms = method.loss(outputs(2), outputs(4), {})
    # student states 1 and 2 against teacher states 2 and 4: ((1 - 2)² + (2 - 4)²) / 2
    assert terms["mse"].item() == pytest.approx(2.5)


def test_ted_teacher_filters_are_frozen_in_stage_two(runner):
    method = runner.plan.method
    method.setup({stage.name: runner.stages.method_stage(stage) for stage in method.stages()})
    assert not any(p.requires_grad for p in method.modules["teacher_filters"].parameters())
    assert all(p.requires_grad for p in method.modules["student_filters"].parameters())
