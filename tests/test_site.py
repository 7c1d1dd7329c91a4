"""The leaderboard people read: the HTML page (in a real browser where Chromium is installed), the plots
that never pool different experiments, and the efficiency figures measured by the tool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_leaderboard import TEACHER, record

from distillbench.cli import main
from distillbench.efficiency import measure
from distillbench.leaderboard import SCORES, collect
from distillbench.plots import method_figures, method_plots
from distillbench.records import write_json_atomic
from distillbench.site import write_site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """Three kd seeds and a finetune on MRPC, a kd after pre-training (another experiment), a teacher."""
    records = [
        record("kd", "mrpc", 1, {"accuracy": 0.80, "f1": 0.85}),
        record("kd", "mrpc", 2, {"accuracy": 0.82, "f1": 0.87}),
        record("kd", "mrpc", 3, {"accuracy": 0.84, "f1": 0.89}),
        record("finetune", "mrpc", 1, {"accuracy": 0.70, "f1": 0.81}),
        record("kd", "mrpc", 1, {"accuracy": 0.60, "f1": 0.70}, setting="after kd pre-training", run_id="pre"),
        record(
            "finetune", "mrpc", 1, {"accuracy": 0.90, "f1": 0.92}, role="teacher", run_id="t", model={"source": TEACHER}
        ),
    ]
    for r in records:
        write_json_atomic(tmp_path / "results" / "runs" / f"{r['run_id']}.json", r)
    return tmp_path / "results"


def plotted_means(figure) -> list[float]:
    """The x of every experiment's point (its mean over seeds)."""
    return sorted(round(float(c.lines[0].get_xdata()[0]), 6) for axis in figure.axes for c in axis.containers)


def test_plots_draw_one_point_per_experiment_never_pooling_settings(board):
    ((name, figure),) = method_figures(collect(board).records)
    assert name == "glue-final"
    # kd task-specific (mean of three seeds), kd after pre-training, finetune; the teacher is a line
    assert plotted_means(figure) == [60.0, 70.0, 82.0]
    (axis,) = figure.axes
    assert [round(line.get_xdata()[0], 6) for line in axis.lines if line.get_linestyle() == "--"] == [90.0]


def test_committed_method_plots_are_drawn_from_the_committed_records(tmp_path):
    """A committed figure older than the records it draws fails here: regenerated, it would differ."""
    records = collect(ROOT / "results").records
    committed = sorted((ROOT / "results" / "plots").glob("methods-*.svg"))
    fresh = [path for score in SCORES for path in method_plots(records, tmp_path, score)]
    assert [p.name for p in committed] == sorted(p.name for p in fresh)
    for path in committed:
        assert path.read_text() == (tmp_path / path.name).read_text(), f"{path.name} is stale"


def test_the_page_holds_the_tables_runs_and_figures_inline(board, tmp_path):
    page = write_site(board, tmp_path / "site").read_text()
    assert "82.0±2.0/87.0±2.0" in page  # kd's three seeds: mean ± std of accuracy/F1
    assert "Task-specific distillation" in page and "After continual pre-training" in page
    assert "kd-mrpc-1.json" not in page and "kdmrpc1.json (seed 1, commit abc" in page  # tooltips name runs
    assert page.count("<svg") >= 2  # the figures are inline
    # nothing fetched: no external script, stylesheet, image or import (namespace URIs are only names)
    assert not re.search(r"""(src|href)=["']?https?:|<link|@import""", page)


def test_efficiency_measures_parameters_latency_and_flops_of_each_architecture(tiny_bert, glue_dir, tmp_path):
    results = tmp_path / "results"
    student = {"student": {"kind": "layers", "layer_ids": [0], "num_layers": 0, "source": None}}
    for r in (
        record("kd", "mrpc", 1, {"accuracy": 0.8, "f1": 0.8}, model=student | {"teacher_source": str(tiny_bert)}),
        record("kd", "mrpc", 2, {"accuracy": 0.8, "f1": 0.8}, model=student | {"teacher_source": str(tiny_bert)}),
    ):
        write_json_atomic(results / "runs" / f"{r['run_id']}.json", r)
    args = ["efficiency", "--results-dir", str(results), "--data-dir", str(glue_dir), "--teacher", str(tiny_bert)]
    assert main(args) == 0
    (path,) = (results / "efficiency").glob("mrpc-*.json")  # two seeds, one architecture: measured once
    measured = json.loads(path.read_text())
    assert len(measured["models"]) == 1 and measured["models"][0].endswith(" layers 0")
    assert measured["layers"] == 1 and measured["latency_ms_batch1"] > 0 and measured["latency_ms_batch32"] > 0
    assert main(args) == 0 and len(list((results / "efficiency").glob("*.json"))) == 1  # kept, not redone


def test_flops_match_the_matmul_count_of_a_bert_forward(tiny_bert):
    """2·m·n·k per matmul: per layer Q, K, V, O (8·L·h²), the FFN (4·L·h·I) and attention (4·L²·h),
    then the pooler and classifier on one position."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

    config = AutoConfig.from_pretrained(tiny_bert, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    length = 10
    rows = [{"input_ids": list(range(5, 5 + length)), "attention_mask": [1] * length} for _ in range(3)]
    collate = DataCollatorWithPadding(_Tokenizer())
    figures = measure(model, rows, collate)
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 8 * length * h * h + 4 * length * h * inner + 4 * length * length * h
    expected = layers * per_layer + 2 * h * h + 2 * h * 2
    assert figures["gflops_per_example"] * 1e9 == pytest.approx(expected, rel=1e-6)
    assert figures["params_total"] == sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert figures["params_non_embedding"] == figures["params_total"] - embeddings


class _Tokenizer:
    """Just enough of a tokenizer for ``DataCollatorWithPadding`` on already-encoded rows."""

    pad_token_id = 0
    padding_side = "right"
    model_input_names = ["input_ids", "attention_mask"]

    def pad(self, features, return_tensors="pt", **_):
        longest = max(len(f["input_ids"]) for f in features)
        return {
            key: torch.tensor([f[key] + [0] * (longest - len(f[key])) for f in features])
            for key in ("input_ids", "attention_mask")
        }


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from distillbench.site import headless_chromium

    driver = headless_chromium(CHROMIUM, CHROMEDRIVER)
    yield driver
    driver.quit()


def test_the_page_sorts_and_filters_in_a_real_browser(board, tmp_path, browser):
    from selenium.webdriver.common.by import By

    page = write_site(board, tmp_path / "site")
    browser.get(page.as_uri())
    table = browser.find_element(By.ID, "task-specific-final")

    def column(name: str) -> list[str]:
        headers = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
        index = headers.index(name)
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        return [r.find_elements(By.TAG_NAME, "td")[index].text for r in rows if r.is_displayed()]

    assert column("method") == ["teacher", "finetune", "kd"]  # teacher first, then table order
    assert column("MRPC acc/F1") == ["90.0/92.0", "70.0/81.0", "82.0±2.0/87.0±2.0"]  # the records' means
    header = next(h for h in table.find_elements(By.CSS_SELECTOR, "thead th") if h.text == "MRPC acc/F1")
    header.click()
    assert column("MRPC acc/F1") == ["70.0/81.0", "82.0±2.0/87.0±2.0", "90.0/92.0"]
    header.click()
    assert column("method") == ["teacher", "kd", "finetune"]
    browser.find_element(By.CSS_SELECTOR, 'input[data-table="task-specific-final"]').send_keys("kd")
    assert column("method") == ["kd"]
    assert browser.save_screenshot(str(tmp_path / "screenshot.png"))
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000


def test_the_committed_page_shows_the_committed_records(browser, tmp_path):
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if "results/site/index.html" not in tracked:
        pytest.skip("not a git checkout with the committed page")
    for name in tracked:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, tmp_path / name)
    fresh = write_site(tmp_path / "results", tmp_path / "fresh").read_text()
    assert (ROOT / "results" / "site" / "index.html").read_text() == fresh
    browser.get((ROOT / "results" / "site" / "index.html").as_uri())
    assert "distillbench leaderboard" in browser.title
