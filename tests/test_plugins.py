"""File plug-ins: a method from one file, loaded by flag or environment, runs like a built-in."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_PLUGINS, launch_cli, tiny_run_args
from distillbench.cli import main
from distillbench.method import list_methods
from distillbench.task import list_tasks

LOGIT_MSE = next(p for p in EXAMPLE_PLUGINS if p.name == "logit_mse.py")
SENTENCE_TSV = next(p for p in EXAMPLE_PLUGINS if p.name == "sentence_tsv.py")


def test_the_example_plugins_are_in_the_registry_for_every_parametrised_test():
    assert "logit-mse" in list_methods() and "sentence-tsv" in list_tasks()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_plugin_file_runs_end_to_end_in_a_fresh_process(how, tiny_bert, glue_dir, workdir, monkeypatch):
    args = tiny_run_args(tiny_bert, glue_dir, "logit-mse")
    if how == "flag":
        args = ["--plugin", str(LOGIT_MSE), *args]
    else:
        monkeypatch.setenv("DISTILLBENCH_PLUGINS", str(LOGIT_MSE))
    process = launch_cli(args, workdir, workdir / "cache")
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    (path,) = (workdir / "results" / "runs").glob("mrpc-logit-mse-*.json")
    record = json.loads(path.read_text())
    assert record["method"] == "logit-mse" and set(record["loss_terms"]) == {"loss", "loss/task", "loss/mse"}


def test_a_task_plugin_file_runs_end_to_end(tiny_bert, tmp_path, workdir):
    data = tmp_path / "data"
    rows = [f"{word} {word} {word}\t{i % 2}" for i, word in enumerate(["good", "bad", "fine", "poor"] * 8)]
    for split, count in (("train", 24), ("dev", 8)):
        (data / "sentences").mkdir(parents=True, exist_ok=True)
        (data / "sentences" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:count]) + "\n")
    args = [*tiny_run_args(tiny_bert, data, "kd", "sentence-tsv")]
    process = launch_cli(["--plugin", str(SENTENCE_TSV), *args], workdir, workdir / "cache")
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    (path,) = (workdir / "results" / "runs").glob("sentence-tsv-kd-*.json")
    record = json.loads(path.read_text())
    assert record["task"] == "sentence-tsv" and set(record["metrics"]) == {"accuracy"}
    assert record["data"] == record["data"] | {"train_examples": 24, "eval_examples": {"validation": 8}}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "from distillbench import register_method\n@register_method('x')\nclass X: pass\n",
            "is not a subclass of Method",
        ),
        ("def broken(:\n", "SyntaxError"),
        ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
    ],
)
def test_a_bad_plugin_is_one_line(source, message, tmp_path, capsys):
    path = tmp_path / f"bad_{abs(hash(source))}.py"
    path.write_text(source)
    assert main(["--plugin", str(path), "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --plugin {path}") or "is not a subclass" in err
    assert message in err and err.count("\n") == 1
    assert main(["--plugin", str(tmp_path / "missing.py"), "list"]) == 2
    assert "not a Python file" in capsys.readouterr().err
