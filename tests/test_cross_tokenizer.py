"""KD between a teacher and a student that tokenise the same text differently (sentence-level tasks).

The teacher here reads words, the student letters: the student batch is the student's tokenisation, the
teacher's outputs come from its cache built on its own tokenisation, and the two meet by example index.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_tiny_bert_with_letters, tiny_run_args
from distillbench.cli import main
from distillbench.config import RunConfig, TrainConfig
from distillbench.distiller import Distiller
from distillbench.harness import Paths, Runner, plan_run


@pytest.fixture(scope="module")
def letters_student(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_bert_with_letters(tmp_path_factory.mktemp("letters"))


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = np.exp((x - x.max(-1, keepdims=True)) / temperature)
    return z / z.sum(-1, keepdims=True)


def test_a_student_with_its_own_tokenizer_is_distilled_end_to_end(tiny_bert, glue_dir, letters_student, workdir):
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--student", str(letters_student))) == 0
    (path,) = (workdir / "results" / "runs").glob("mrpc-kd-*.json")
    record = json.loads(path.read_text())
    assert record["model"]["student_tokenizer"].endswith(letters_student.name)
    assert record["teacher_cache"]["key"]  # the teacher's outputs came from its cache
    assert all(np.isfinite(step["loss/kd"]) for step in record["loss_history"])
    saved = AutoTokenizer.from_pretrained(str(workdir / "outputs" / path.stem / "student"))
    assert saved.get_vocab() == AutoTokenizer.from_pretrained(str(letters_student)).get_vocab()


def test_the_kd_term_equals_each_model_on_its_own_tokenisation(tiny_bert, glue_dir, letters_student, tmp_path):
    """The Distiller's KD term on a student batch equals T²·KL(teacher ‖ student) computed here with the
    teacher reading its own tokenisation of the raw text and the student its own."""
    train = TrainConfig(max_steps=2, teacher_max_steps=2, batch_size=8, teacher_cache="on")
    config = RunConfig(
        method="kd",
        task="mrpc",
        teacher=str(tiny_bert),
        student=str(letters_student),
        data_dir=str(glue_dir),
        train=train,
    )
    paths = Paths(results_dir=tmp_path / "r", output_dir=tmp_path / "o", cache_dir=tmp_path / "c", show_progress=False)
    runner = Runner(plan_run(config, paths))
    assert runner.plan.cross_tokenizer
    teacher_dir, info = runner.stages.finetuned("teacher")
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)).eval()
    cache = runner.caches.for_teacher(teacher, info)
    student = runner.stages.fresh_model("student").eval()
    torch.manual_seed(0)
    student.classifier.weight.data.normal_(0, 2.0)  # a student far from the teacher: a KD term well above noise
    method = runner.plan.method
    method.setup({})
    distiller = Distiller(student, teacher, method, runner.task, cache).train()
    student.eval()
    rows = [0, 5, 17, 30]
    batch = runner.task.collator(runner.data.tokenizer)([runner.data.train_split(None, indexed=True)[i] for i in rows])
    with torch.no_grad():
        kd = float(distiller(**batch)["terms"]["kd"])

    raw = runner.task.load()["train"].select(rows)
    texts = (list(raw["text0"]), list(raw["text1"]))
    with torch.no_grad():
        t_inputs = AutoTokenizer.from_pretrained(str(tiny_bert))(*texts, padding=True, return_tensors="pt")
        s_inputs = AutoTokenizer.from_pretrained(str(letters_student))(*texts, padding=True, return_tensors="pt")
        assert s_inputs["input_ids"].shape[1] > t_inputs["input_ids"].shape[1]  # letters: longer sequences
        t_logits = teacher(**t_inputs).logits.numpy()
        s_logits = student(**s_inputs).logits.numpy()
    temperature = method.hp.temperature
    p_t, p_s = softmax(t_logits, temperature), softmax(s_logits, temperature)
    expected = method.hp.kl_alpha * temperature**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1))
    assert kd == pytest.approx(expected, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize(
    ("method", "task", "extra", "message"),
    [
        ("lwd", "mrpc", [], "lwd reads the teacher's hidden_states, which has no alignment across tokenizers"),
        ("ted", "mrpc", [], "ted reads the teacher's hidden_states"),
        ("minilm", "mrpc", [], "minilm reads the teacher's qkv"),
        ("kd", "squad", ["--set", "max_seq_length=64"], "squad's distilled outputs are per token"),
        ("kd", "mrpc", ["--teacher-cache", "off"], "--teacher-cache off cannot be used"),
    ],
)
def test_what_cannot_cross_tokenizers_is_one_error_before_anything_is_written(
    method, task, extra, message, tiny_bert, glue_dir, squad_dir, letters_student, workdir, capsys
):
    data = squad_dir if task == "squad" else glue_dir
    args = tiny_run_args(tiny_bert, data, method, task, "--student", str(letters_student), *extra)
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the student's tokenizer differs from the teacher's") and message in line
    assert not (workdir / "results").exists() and not (workdir / "cache").exists()


def test_a_student_folder_without_a_tokenizer_reads_the_teachers(tiny_bert, letters_student, tmp_path):
    import shutil

    from distillbench.errors import UserError
    from distillbench.planning import same_tokenizer

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, bare / name)
    assert same_tokenizer(str(bare), str(tiny_bert))
    assert same_tokenizer(str(tiny_bert), str(tiny_bert)) and not same_tokenizer(str(letters_student), str(tiny_bert))
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(letters_student / name, other / name)
    with pytest.raises(UserError, match="has no tokenizer of its own, and its vocabulary"):
        same_tokenizer(str(other), str(tiny_bert))


def test_tokenisations_holding_different_examples_are_refused():
    from types import SimpleNamespace

    from datasets import Dataset

    from distillbench.errors import UserError
    from distillbench.training import check_aligned

    task = SimpleNamespace(label_keys=("labels",))

    def side(labels: list[int]) -> SimpleNamespace:
        return SimpleNamespace(task=task, splits={"train": Dataset.from_dict({"labels": labels})})

    check_aligned(side([0, 1, 1]), side([0, 1, 1]))
    for other in ([0, 1], [1, 0, 1]):
        with pytest.raises(UserError, match="tokenisations hold different examples"):
            check_aligned(side([0, 1, 1]), side(other))


def test_the_teacher_stage_is_the_same_with_either_student(tiny_bert, glue_dir, letters_student, workdir):
    """The teacher reads its own tokenisation either way: a same-tokenizer run's cached teacher serves
    the cross-tokenizer run."""
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-seed", "1")) == 0
    args = tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-seed", "1", "--student", str(letters_student))
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("mrpc-kd-*.json")]
    (cross,) = [r for r in records if "student_tokenizer" in r["model"]]
    assert cross["stages"]["teacher-finetune"]["built_here"] is False
