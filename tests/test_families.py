"""Every method on every supported encoder family, on tiny random configs built here (no downloads).

Teacher: 4 layers, width 32, 4 heads. Students: a narrower, shallower model of the same family with
fewer heads (2 layers, width 16, 2 heads), the same with equal heads (for MiniLM v1), and two teacher
layers copied DistilBERT-style. Where a method reads model internals (Q/K/V, hidden states) its loss
term is checked against a computation that reads the weights by their documented state-dict names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import FAMILY_CONFIGS, make_glue, make_tiny_model, model_zoo, tiny_run_args
from distillbench import ModelPair, get_method, get_task, list_methods
from distillbench.cli import main
from distillbench.distiller import Distiller
from distillbench.families import FAMILIES
from distillbench.models import StudentSpec, build_student

FAMILY_NAMES = list(FAMILY_CONFIGS)
BUILT_IN = ["finetune", "kd", "lwd", "minilm", "minilmv2", "ted"]

# The state-dict name of layer i's query/key/value weight, as each family's modelling code names it;
# written out here independently of distillbench's family table.
QKV_WEIGHTS = {
    "bert": ["bert.encoder.layer.{i}.attention.self." + p for p in ("query", "key", "value")],
    "roberta": ["roberta.encoder.layer.{i}.attention.self." + p for p in ("query", "key", "value")],
    "electra": ["electra.encoder.layer.{i}.attention.self." + p for p in ("query", "key", "value")],
    "deberta-v2": ["deberta.encoder.layer.{i}.attention.self." + p for p in ("query_proj", "key_proj", "value_proj")],
    "distilbert": ["distilbert.transformer.layer.{i}.attention." + p for p in ("q_lin", "k_lin", "v_lin")],
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory):
    """``zoo(family, shape)`` → a saved tiny model folder, built once per module."""
    shapes = {
        "teacher": (4, 32, 4),
        "narrow": (2, 16, 2),
        "narrow-equal-heads": (2, 16, 4),
        "half-width": (4, 16, 2),  # the paper's DeBERTaV3-xsmall beside -base: half the width, same depth
    }
    return model_zoo(tmp_path_factory.mktemp("families"), make_tiny_model, shapes)


@pytest.fixture(scope="module")
def family_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_glue(tmp_path_factory.mktemp("family-data"))


@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache per module: each family's teacher is fine-tuned once and reused, as in a sweep."""
    return tmp_path_factory.mktemp("family-cache")


def run_family(zoo, data: Path, cache: Path, tmp_path: Path, family: str, method: str, *student: str) -> int:
    args = tiny_run_args(zoo(family, "teacher"), data, method, "mrpc", "--cache-dir", str(cache))
    return main([*args, "--results-dir", str(tmp_path / "results"), "--output-dir", str(tmp_path / "out"), *student])


def one_record(tmp_path: Path) -> dict:
    """The run's student record (the first run of a family also records its teacher's fine-tuning)."""
    records = [json.loads(path.read_text()) for path in (tmp_path / "results" / "runs").glob("*.json")]
    (record,) = [r for r in records if r["role"] != "teacher"]
    return record


def test_the_family_table_covers_every_tested_family():
    assert set(FAMILY_NAMES) <= set(FAMILIES)


def dry_run(zoo, data: Path, tmp_path: Path, family: str, method: str, *student: str) -> int:
    args = tiny_run_args(zoo(family, "teacher"), data, method, "mrpc", "--cache-dir", str(tmp_path / "cache"))
    return main([*args, "--results-dir", str(tmp_path / "results"), "--dry-run", *student])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_staged_run_per_family_end_to_end(family, zoo, family_data, stage_cache, tmp_path):
    """TED, the method with the most stages (both fine-tunes, both filter stages, the distillation), runs
    through on each family with a narrower, shallower student with fewer heads."""
    student = str(zoo(family, "narrow"))
    assert run_family(zoo, family_data, stage_cache, tmp_path, family, "ted", "--student", student) == 0
    record = one_record(tmp_path)
    assert record["status"] == "complete" and math.isfinite(record["metrics"]["accuracy"])
    assert {"teacher-finetune", "ted-filters-teacher", "student-finetune", "ted-filters-student"} <= set(
        record["stages"]
    )
    assert record["model"]["student_architecture"] == {
        "model_type": family,
        "num_hidden_layers": 2,
        "hidden_size": 16,
        "num_attention_heads": 2,
    }
    assert record["model"]["teacher_architecture"]["hidden_size"] == 32
    assert all(math.isfinite(value) for value in record["loss_terms"].values())


@pytest.mark.parametrize("method", BUILT_IN)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_method_plans_a_narrower_shallower_student_with_fewer_heads(
    family, method, zoo, family_data, tmp_path, capsys
):
    code = dry_run(zoo, family_data, tmp_path, family, method, "--student", str(zoo(family, "narrow")))
    captured = capsys.readouterr()
    if method == "minilm":  # v1 compares attention maps head by head
        assert code == 2
        assert captured.err.strip().splitlines() == [
            "error: minilm needs equal attention head counts (student 2, teacher 4); "
            "use minilmv2, whose relation heads are configurable"
        ]
    else:
        assert code == 0 and f"({family}, 2 layers, width 16, 2 heads)" in captured.out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("method", ["kd", "minilm", "ted"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_layer_copying_plans_a_student_of_teacher_blocks(family, method, zoo, family_data, tmp_path, capsys):
    assert dry_run(zoo, family_data, tmp_path, family, method, "--student-layer-ids", "1,3") == 0
    out = capsys.readouterr().out
    assert "teacher layers 1,3" in out and f"({family}, 2 layers, width 32, 4 heads)" in out


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_copied_blocks_are_the_teachers_blocks(family, zoo):
    teacher_dir = str(zoo(family, "teacher"))
    spec = StudentSpec("layers", layer_ids=(1, 3))
    student = build_student(spec, teacher_dir, "AutoModelForSequenceClassification", {"num_labels": 2}, False)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, num_labels=2)
    names = QKV_WEIGHTS[family]
    for new, old in enumerate((1, 3)):
        for name in names:
            torch.testing.assert_close(
                student.state_dict()[name.format(i=new) + ".weight"],
                teacher.state_dict()[name.format(i=old) + ".weight"],
            )
    assert student.config.num_hidden_layers == 2


def make_tiny_albert(folder: Path) -> Path:
    """ALBERT shares one block across its layers, so it has no per-layer blocks to copy or hook: a family
    the table leaves out on purpose."""
    from transformers import AlbertConfig, AlbertModel, BertTokenizer

    from conftest import PUNCT, SPECIALS, WORDS

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + PUNCT)}
    config = AlbertConfig(
        vocab_size=len(vocab),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    AlbertModel(config).save_pretrained(folder)
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("method", "student", "needed_for"),
    [
        ("minilmv2", ["--student", "random:1"], "minilmv2 (Q/K/V capture)"),
        ("kd", ["--student-layers", "1"], "a student of copied teacher layers"),
    ],
)
def test_internals_of_an_undescribed_family_are_one_error_before_anything_is_written(
    method, student, needed_for, family_data, tmp_path, capsys
):
    teacher = make_tiny_albert(tmp_path / "albert")
    capsys.readouterr()  # saving the model writes progress bars
    args = tiny_run_args(teacher, family_data, method, "mrpc", "--cache-dir", str(tmp_path / "cache"))
    assert main([*args, "--results-dir", str(tmp_path / "results"), *student]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line.startswith(f"error: {needed_for}") and "model type 'albert' is not in distillbench's family table" in line
    )
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_logit_methods_need_no_family_entry(family_data, tmp_path):
    """KD reads only logits, which every Hugging Face model returns: an undescribed family runs."""
    teacher = make_tiny_albert(tmp_path / "albert")
    args = tiny_run_args(teacher, family_data, "kd", "mrpc", "--cache-dir", str(tmp_path / "cache"))
    assert main([*args, "--results-dir", str(tmp_path / "results"), "--student", "random:1"]) == 0
    assert one_record(tmp_path)["model"]["teacher_architecture"]["model_type"] == "albert"


def batch_of(folder: Path) -> dict[str, torch.Tensor]:
    """Two sentence pairs of different lengths (right padding) with their labels."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(
        ["the cat sat on the mat .", "a dog ran ."],
        ["the big red dog was not home today .", "the bird flew ."],
        padding=True,
        return_tensors="pt",
    )
    return dict(batch) | {"labels": torch.tensor([0, 1])}


def independent_qkv(model, family: str, batch: dict[str, torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per layer (Q, K, V): the layer input (``hidden_states[i]``) times the weights named in QKV_WEIGHTS."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
    weights = model.state_dict()
    return [
        [
            states[i] @ weights[name.format(i=i) + ".weight"].T + weights[name.format(i=i) + ".bias"]
            for name in QKV_WEIGHTS[family]
        ]
        for i in range(model.config.num_hidden_layers)
    ]


def naive_relation_kl(student: tuple, teacher: tuple, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) of softmax(A Bᵀ/√d) per example, head and real query, looped over by hand."""
    total, count = torch.tensor(0.0, dtype=torch.float64), 0
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        for r in range(heads):
            probs = []
            for left, right in (teacher, student):
                d = left.shape[-1] // heads
                a, c = left[b, :n, r * d : (r + 1) * d].double(), right[b, :n, r * d : (r + 1) * d].double()
                probs.append(torch.softmax(a @ c.T / math.sqrt(d), dim=-1))
            p_teacher, p_student = probs
            total += (p_teacher * (p_teacher.log() - p_student.log())).sum()
            count += n
    return total / count


def distiller_terms(method_name: str, family: str, zoo, student_shape: str, **hparams) -> tuple:
    """The method's loss terms through the real Distiller (student without dropout), and the models. A
    method's stages (TED's filters) are given freshly initialised states, as Stage I would hand over."""
    teacher_dir, student_dir = zoo(family, "teacher"), zoo(family, student_shape)
    task = get_task("mrpc")(None)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), num_labels=2).eval()
    student = AutoModelForSequenceClassification.from_pretrained(str(student_dir), num_labels=2)
    method_cls = get_method(method_name)
    method = method_cls(method_cls.HParams(**hparams), task, ModelPair(student=student.config, teacher=teacher.config))
    torch.manual_seed(0)
    method.setup({stage.name: fresh_stage_state(stage, student, teacher, task) for stage in method.stages()})
    distiller = Distiller(student, teacher, method, task)
    distiller.train()
    student.eval()  # the training branch of the Distiller, without dropout noise
    batch = batch_of(student_dir)
    with torch.no_grad():
        terms = distiller(**batch)["terms"]
    return terms, method, student, teacher, batch


def fresh_stage_state(stage, student, teacher, task) -> dict[str, torch.Tensor]:
    """What a stage hands to the method (its module's ``extra`` state, as the harness saves it), before
    any training."""
    return stage.build(teacher if stage.model == "teacher" else student, task).extra.state_dict()


@pytest.mark.parametrize("method", ["finetune", "kd", "ted"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_task_logit_and_filter_terms_equal_an_independent_computation(method, family, zoo):
    """On one batch through the real Distiller: the task term is the student's cross-entropy, KD's term
    is α·T²·KL(teacher/T ‖ student/T) by hand, TED's term the MSE of the filtered states by hand."""
    # a low temperature sharpens the random models' near-equal logits, so the KD term is far from zero
    hparams = {} if method == "finetune" else {"temperature": 0.05}
    terms, method_obj, student, teacher, batch = distiller_terms(method, family, zoo, "narrow", **hparams)
    assert all(torch.isfinite(value) for value in terms.values())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s_out = student(**inputs, output_hidden_states=True)
        t_out = teacher(**inputs, output_hidden_states=True)
    logits = s_out.logits.double()
    task_loss = -torch.log_softmax(logits, -1)[torch.arange(2), batch["labels"]].mean()
    torch.testing.assert_close(terms["task"].double(), task_loss, rtol=1e-5, atol=1e-6)
    if method == "finetune":
        assert set(terms) == {"task"}
        return
    hp = method_obj.hp
    p_teacher = torch.softmax(t_out.logits.double() / hp.temperature, -1)
    log_student = torch.log_softmax(logits / hp.temperature, -1)
    kl = (p_teacher * (p_teacher.log() - log_student)).sum(-1).mean()
    expected = hp.kl_alpha * hp.temperature**2 * kl
    assert float(expected) > 1e-7
    torch.testing.assert_close(terms["kd"].double(), expected, rtol=1e-3, atol=1e-9)
    if method == "ted":
        filters = method_obj.modules["student_filters"], method_obj.modules["teacher_filters"]
        with torch.no_grad():
            pairs = [
                (s_filter(s_out.hidden_states[s + 1]), t_filter(t_out.hidden_states[t + 1]))
                for s, t, s_filter, t_filter in zip(
                    method_obj.student_layers, method_obj.teacher_layers, *filters, strict=True
                )
            ]
        expected = hp.mse_alpha * sum(((a - b) ** 2).mean() for a, b in pairs) / len(pairs)
        torch.testing.assert_close(terms["mse"], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_qkv_capture_equals_the_documented_projections(family, zoo):
    from distillbench.models import QKVCapture

    model = AutoModelForSequenceClassification.from_pretrained(str(zoo(family, "teacher")), num_labels=2).eval()
    capture = QKVCapture(model)
    batch = batch_of(zoo(family, "teacher"))
    expected = independent_qkv(model, family, batch)
    captured = capture.collect()
    assert len(captured) == len(expected) == 4
    for ours, theirs in zip(captured, expected, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_minilmv2_relation_term_equals_an_independent_computation(family, zoo):
    terms, _method, student, teacher, batch = distiller_terms("minilmv2", family, zoo, "narrow", relation_heads=4)
    s_qkv, t_qkv = independent_qkv(student, family, batch)[-1], independent_qkv(teacher, family, batch)[-1]
    mask = batch["attention_mask"]
    expected = sum(naive_relation_kl((s, s), (t, t), 4, mask) for s, t in zip(s_qkv, t_qkv, strict=True))
    torch.testing.assert_close(terms["relation"].double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_minilm_attention_and_value_terms_equal_an_independent_computation(family, zoo):
    terms, _method, student, teacher, batch = distiller_terms("minilm", family, zoo, "narrow-equal-heads")
    (s_q, s_k, s_v), (t_q, t_k, t_v) = (
        independent_qkv(student, family, batch)[-1],
        independent_qkv(teacher, family, batch)[-1],
    )
    mask = batch["attention_mask"]
    expected = naive_relation_kl((s_q, s_k), (t_q, t_k), 4, mask) + naive_relation_kl((s_v, s_v), (t_v, t_v), 4, mask)
    torch.testing.assert_close(terms["relation"].double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lwd_hidden_state_term_equals_an_independent_computation(family, zoo):
    terms, method, student, teacher, batch = distiller_terms("lwd", family, zoo, "narrow", kl_alpha=0.0, mse_alpha=1.0)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s_states = student(**inputs, output_hidden_states=True).hidden_states
        t_states = teacher(**inputs, output_hidden_states=True).hidden_states
        projections = method.modules["projections"]
        expected = sum(
            ((projections[i](s_states[i + 1]) - t_states[m + 1]) ** 2).mean() for i, m in enumerate(method.layer_map)
        ) / len(method.layer_map)
    assert method.layer_map == [1, 3]
    torch.testing.assert_close(terms["mse"], expected, rtol=1e-5, atol=1e-7)


def test_the_papers_pair_is_planned_without_training_anything(zoo, family_data, tmp_path, capsys):
    """``run --dry-run`` on local DeBERTa-v2 folders shaped like DeBERTaV3-base → -xsmall: the pair, the
    stages in order and the task's hyper-parameters are validated and printed; nothing is written."""
    teacher, student = zoo("deberta-v2", "teacher"), zoo("deberta-v2", "half-width")
    capsys.readouterr()
    common = ["run", "--task", "mnli", "--teacher", str(teacher), "--student", str(student)]
    common += ["--data-dir", str(family_data), "--results-dir", str(tmp_path / "results")]
    common += ["--cache-dir", str(tmp_path / "cache"), "--dry-run"]
    assert main([*common, "--method", "ted"]) == 0
    out = capsys.readouterr().out
    assert "(deberta-v2, 4 layers, width 32, 4 heads)" in out and "(deberta-v2, 4 layers, width 16, 2 heads)" in out
    stages = "teacher fine-tune → ted-filters-teacher → student fine-tune → ted-filters-student → ted on the student"
    assert stages in out and "kl_alpha=5.0  mse_alpha=7500.0" in out  # TED's MNLI settings
    assert main([*common, "--method", "minilm"]) == 2
    assert "minilm needs equal attention head counts" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


# Token-level divergences of the logits alone, which every family returns: tests/test_divergences.py covers them.
LOGIT_DIVERGENCES = {"reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "gkd"}


def test_every_registered_method_is_covered():
    """A method added to the registry joins the family runs (or this test says it was left out)."""
    plugins = {"logit-mse"}  # the example file plug-in, a logit-only method covered by tests/test_plugins.py
    assert set(list_methods()) - plugins - LOGIT_DIVERGENCES == set(BUILT_IN)


def test_the_models_page_lists_every_family_in_the_table():
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    listed = {line.split("|")[2].strip(" `") for line in page.splitlines() if line.startswith("| ") and "`" in line}
    assert set(FAMILIES) <= listed
