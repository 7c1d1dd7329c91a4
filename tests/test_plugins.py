"""File plug-ins: a method from one file, loaded by flag or environment, runs like a built-in."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_PLUGINS, launch_cli, tiny_run_args
from distillbench.cli import main
from distillbench.method import list_methods


def test_the_example_plugin_is_in_the_registry_for_every_parametrised_test():
    assert "logit-mse" in list_methods() and EXAMPLE_PLUGINS


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_plugin_file_runs_end_to_end_in_a_fresh_process(how, tiny_bert, glue_dir, workdir, monkeypatch):
    args = tiny_run_args(tiny_bert, glue_dir, "logit-mse")
    if how == "flag":
        args = ["--plugin", str(EXAMPLE_PLUGINS[0]), *args]
    else:
        monkeypatch.setenv("DISTILLBENCH_PLUGINS", str(EXAMPLE_PLUGINS[0]))
    process = launch_cli(args, workdir, workdir / "cache")
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    (path,) = (workdir / "results" / "runs").glob("mrpc-logit-mse-*.json")
    record = json.loads(path.read_text())
    assert record["method"] == "logit-mse" and set(record["loss_terms"]) == {"loss", "loss/task", "loss/mse"}


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
