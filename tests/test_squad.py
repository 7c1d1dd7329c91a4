"""SQuAD: official-equivalent scoring, windows, post-processing, end-to-end runs of every QA path."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import tiny_run_args
from distillbench import UserError, get_task
from distillbench.cli import main
from distillbench.tasks.squad_eval import normalize_answer, score_v1, score_v2

SHARED_SQUAD = Path(os.environ.get("DISTILLBENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OFFICIAL = SHARED_SQUAD / "squad"


def test_normalisation_edge_cases():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("  theatre  ") == "theatre"  # 'the' only as a word
    assert normalize_answer("...") == ""


def test_v1_scores_by_hand():
    examples = [("q1", ["Denver Broncos", "The Broncos"]), ("q2", ["blue"]), ("q3", ["a b c d"])]
    predictions = {"q1": "broncos", "q2": "Blue.", "q3": "b c x"}
    result = score_v1(examples, predictions)
    # q1: EM 1 ("the broncos" ≡ "broncos"); q2: EM 1; q3: gold "a b c d" loses the article "a" → "b c d",
    # prediction "b c x": precision = recall = 2/3, so F1 = 2/3
    assert result["exact_match"] == pytest.approx(100 * 2 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert score_v1([("q", ["x"])], {"q": "..."})["f1"] == 0.0  # empty normalised prediction


def test_v2_scores_by_hand_with_no_answer_questions():
    examples = [("a", ["Paris"]), ("b", []), ("c", []), ("d", ["red car"])]
    predictions = {"a": "paris", "b": "", "c": "something", "d": "car"}
    result = score_v2(examples, predictions)
    assert result["exact"] == pytest.approx(50.0) and result["total"] == 4
    assert result["f1"] == pytest.approx(100 * (1 + 1 + 0 + 2 / 3) / 4)
    assert result["HasAns_total"] == 2 and result["NoAns_exact"] == pytest.approx(50.0)
    with_probs = score_v2(examples, predictions, {"a": 0.1, "b": 0.9, "c": 0.8, "d": 0.2})
    # start from "all no-answer" (2/4 right); by rising probability: a (+1, best: 3/4 at 0.1), d (+0),
    # c (answered a no-answer question: −1), b (+0)
    assert with_probs["best_exact"] == pytest.approx(75.0) and with_probs["best_exact_thresh"] == 0.1


def official(script: str, data: Path, predictions: dict, tmp_path: Path, na_probs: dict | None = None) -> dict:
    pred_file = tmp_path / "pred.json"
    pred_file.write_text(json.dumps(predictions))
    extra = []
    if na_probs is not None:
        (tmp_path / "na.json").write_text(json.dumps(na_probs))
        extra = ["--na-prob-file", str(tmp_path / "na.json")]
    out = subprocess.run(
        [sys.executable, str(OFFICIAL / script), str(data), str(pred_file), *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def random_predictions(data: Path, seed: int) -> tuple[list, dict, dict]:
    rng = random.Random(seed)
    examples = [
        (qa["id"], [a["text"] for a in qa["answers"]])
        for article in json.loads(data.read_text())["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    predictions, na_probs = {}, {}
    for qid, golds in examples:
        r = rng.random()
        gold = golds[0] if golds else "nothing"
        predictions[qid] = "" if r < 0.25 else gold if r < 0.55 else f"the {gold.upper()} ." if r < 0.8 else "x y"
        na_probs[qid] = round(rng.random(), 3)
    return examples, predictions, na_probs


@pytest.mark.skipif(not (OFFICIAL / "evaluate-v2.0.py").is_file(), reason="../shared/data/squad not present")
@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_identical_to_the_official_scripts(version, squad_dir, tmp_path):
    files = [squad_dir / "squad" / f"dev-v{version}.json"]
    files += [OFFICIAL / "dev-v1.1.json"] if version == "1.1" else [OFFICIAL / "dev-v2.0-subset.json"]
    for data in files:
        examples, predictions, na_probs = random_predictions(data, seed=len(str(data)))
        if version == "1.1":
            assert score_v1(examples, predictions) == official("evaluate-v1.1.py", data, predictions, tmp_path)
        else:
            assert score_v2(examples, predictions) == official("evaluate-v2.0.py", data, predictions, tmp_path)
            assert score_v2(examples, predictions, na_probs) == official(
                "evaluate-v2.0.py", data, predictions, tmp_path, na_probs
            )


@pytest.fixture
def squad_task(squad_dir, tiny_bert):
    task = get_task("squad_v2")(squad_dir, get_task("squad_v2").Options(doc_stride=16))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    return task, tokenizer, task.preprocess(task.load(), tokenizer, 48)


def test_windows_positions_point_at_the_answer(squad_task):
    task, tokenizer, features = squad_task
    examples = {e["id"]: e for e in task.eval_examples}
    per_example = {}
    for feature, example_id in zip(features["validation"], task.eval_features["example_id"], strict=True):
        per_example.setdefault(example_id, []).append(feature)
    assert max(len(v) for v in per_example.values()) >= 3  # long contexts need several windows
    lengths = [len(ids) for ids in features["validation"]["input_ids"]]
    assert lengths == sorted(lengths) and len(set(lengths)) > 1  # shortest first: little padding at eval
    for example_id, windows in per_example.items():
        gold = examples[example_id]["answers"]["text"]
        found = []
        for window in windows:
            start, end = window["start_positions"], window["end_positions"]
            if start == 0:
                assert end == 0  # CLS: unanswerable or outside this window
                continue
            found.append(tokenizer.decode(window["input_ids"][start : end + 1]))
        if gold:
            assert found and all(text == gold[0] for text in found)
        else:
            assert not found


def test_postprocessing_recovers_spans_and_null_answers(squad_task):
    task, _, features = squad_task
    n, length = len(features["validation"]), max(len(f) for f in features["validation"]["input_ids"])
    start_logits = np.full((n, length), -10.0)
    end_logits = np.full((n, length), -10.0)
    for i, feature in enumerate(features["validation"]):  # put all mass on the labelled positions
        start_logits[i, feature["start_positions"]] = 10.0
        end_logits[i, feature["end_positions"]] = 10.0
    metrics = task.compute_metrics((start_logits, end_logits), None)
    assert metrics["exact"] == 100.0 and metrics["f1"] == 100.0
    assert metrics["NoAns_total"] > 0 and metrics["HasAns_total"] > 0


def test_slow_tokenizer_and_bad_files_are_clear_errors(squad_dir, tmp_path, workdir, tiny_bert, capsys):
    task = get_task("squad")(squad_dir)

    class Slow:
        is_fast = False

    with pytest.raises(UserError, match="needs a fast tokenizer"):
        task.preprocess(task.load(), Slow(), 48)
    bad = tmp_path / "bad" / "squad"
    bad.mkdir(parents=True)
    (bad / "train-v1.1.json").write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')
    (bad / "dev-v1.1.json").write_text("not json")
    code = main([*tiny_run_args(tiny_bert, tmp_path / "bad", "kd", "squad"), "--set", "max_seq_length=48"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: malformed SQuAD file") and err.count("\n") == 1
    (bad / "dev-v1.1.json").unlink()
    assert main([*tiny_run_args(tiny_bert, tmp_path / "bad", "kd", "squad"), "--set", "max_seq_length=48"]) == 2
    assert "missing data file" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["squad", "squad_v2"])
@pytest.mark.parametrize("method", ["finetune", "kd", "ted"])
def test_qa_end_to_end(task, method, tiny_bert, squad_dir, workdir, capsys):
    args = [*tiny_run_args(tiny_bert, squad_dir, method, task), "--set", "max_seq_length=48", "--set", "doc_stride=16"]
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("*.json")]
    record = next(r for r in records if r["role"] == "student")
    expected = {"exact_match", "f1"} if task == "squad" else {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1"}
    assert expected <= set(record["metrics"])
    assert record["task_options"]["doc_stride"] == 16
    if method == "kd":
        assert record["loss_terms"]["loss/kd"] >= 0


def test_eval_strategy_end_scores_once_after_training(tiny_bert, squad_dir, workdir, capsys):
    """SQuAD's dev set is 10k questions: ``eval_strategy=end`` skips the per-epoch passes, keeps the score."""
    base = [*tiny_run_args(tiny_bert, squad_dir, "kd", "squad"), "--set", "max_seq_length=48"]
    assert main([*base, "--set", "doc_stride=16", "--set", "eval_strategy=sometimes"]) == 2
    assert capsys.readouterr().err.startswith("error: --set: eval_strategy=sometimes: must be one of epoch, end")
    args = [*base, "--max-steps", "-1", "--epochs", "2", "--set", "teacher_max_steps=-1", "--set", "doc_stride=16"]
    assert main([*args, "--set", "eval_strategy=end"]) == 0
    records = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("*.json")]
    assert {r["role"] for r in records} == {"teacher", "student"}
    for record in records:
        assert [h["epoch"] for h in record["epochs"]] == [2.0] and record["train"]["eval_strategy"] == "end"
        assert record["epochs"][0]["metrics"] == record["metrics"] and {"exact_match", "f1"} <= set(record["metrics"])
    assert main(args) == 0  # per epoch: the cached teacher is reused, the student scores both epochs
    student = max(
        (json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("squad-kd-*.json")),
        key=lambda r: len(r["epochs"]),
    )
    assert len(student["epochs"]) == 2


@pytest.mark.parametrize("task", ["squad", "squad_v2"])
def test_stored_predictions_rescore_to_the_records_figures(task, tiny_bert, squad_dir, workdir, capsys, tmp_path):
    """The predictions file a run stores is what the official script reads: rescoring it (with the
    official script when ../shared has it, always with the project's own scorer) gives the record's EM/F1."""
    from distillbench.predictions import evaluation_of

    args = [*tiny_run_args(tiny_bert, squad_dir, "kd", task), "--set", "max_seq_length=48", "--set", "doc_stride=16"]
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("*.json")]
    for record in records:  # the teacher stage stores its predictions too
        arrays = evaluation_of(record, workdir / "results")
        predictions = dict(zip(arrays["id"].tolist(), arrays["answer"].tolist(), strict=True))
        version = "1.1" if task == "squad" else "2.0"
        data = squad_dir / "squad" / f"dev-v{version}.json"
        examples = [
            (qa["id"], [a["text"] for a in qa["answers"]])
            for article in json.loads(data.read_text())["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
        na_probs = (
            dict(zip(arrays["id"].tolist(), arrays["na_prob"].tolist(), strict=True)) if "na_prob" in arrays else None
        )
        ours = score_v1(examples, predictions) if na_probs is None else score_v2(examples, predictions, na_probs)
        assert ours == pytest.approx({k: record["metrics"][k] for k in ours})
        if (OFFICIAL / "evaluate-v2.0.py").is_file():
            script = f"evaluate-v{version}.py"
            scored = official(script, data, predictions, tmp_path, na_probs)
            assert scored == pytest.approx({k: record["metrics"][k] for k in scored})


def test_train_and_dev_files_by_name(tiny_bert, squad_dir, workdir, tmp_path, capsys, monkeypatch):
    """A training subset under its own name (train_file/dev_file) trains exactly as the same file under
    the default name, and the record names the files it read."""
    renamed = tmp_path / "renamed" / "squad"
    renamed.mkdir(parents=True)
    shutil.copy(squad_dir / "squad" / "train-v2.0.json", renamed / "train-v2.0-subset.json")
    shutil.copy(squad_dir / "squad" / "dev-v2.0.json", renamed / "dev-v2.0-reconstructed.json")
    small = ["--set", "max_seq_length=48", "--set", "doc_stride=16"]
    assert main([*tiny_run_args(tiny_bert, squad_dir, "finetune", "squad_v2"), *small]) == 0
    by_name = ["--set", "train_file=train-v2.0-subset.json", "--set", "dev_file=dev-v2.0-reconstructed.json"]
    assert main([*tiny_run_args(tiny_bert, renamed.parent, "finetune", "squad_v2"), *small, *by_name]) == 0
    default, named = sorted(
        (json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("squad_v2-finetune-*.json")),
        key=lambda r: bool(r["task_options"]["train_file"]),
    )
    assert named["data"]["files"] == ["data:squad/train-v2.0-subset.json", "data:squad/dev-v2.0-reconstructed.json"]
    assert named["data"]["sha256"] != default["data"]["sha256"]
    assert named["metrics"] == default["metrics"]

    monkeypatch.delenv("DISTILLBENCH_DATA", raising=False)
    hub = [a for a in tiny_run_args(tiny_bert, squad_dir, "finetune", "squad_v2") if a != str(squad_dir)]
    assert main([a for a in hub if a != "--data-dir"] + small + by_name) == 2  # a valid pair: the data is checked last
    assert "train_file/dev_file name files under --data-dir" in capsys.readouterr().err
