"""The leaderboard people read: the HTML page (in a real browser where Chromium is installed), the plots
that never pool different experiments, and the efficiency figures measured by the tool."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.colors
import pytest
import torch
from committed import committed_results, committed_text
from test_leaderboard import TEACHER, record

from distillbench.cli import main
from distillbench.efficiency import measure
from distillbench.experiments import group_experiments
from distillbench.plots import experiment_figure, experiment_plots, method_colours
from distillbench.records import write_json_atomic
from distillbench.report import PUBLISHED_INCLUDES_BOUNDED, read_results
from distillbench.selection import collect
from distillbench.site import write_site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """Three kd seeds and a finetune on MRPC, a kd after pre-training (another experiment), a teacher;
    the records hold the majority-class score, as real runs' do."""
    records = [
        record("kd", "mrpc", 1, {"accuracy": 0.80, "f1": 0.85}, majority_baseline={"accuracy": 0.684, "f1": 0.812}),
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
    """The x of every method's point (its mean over seeds)."""
    return sorted(round(float(c.lines[0].get_xdata()[0]), 6) for axis in figure.axes for c in axis.containers)


def test_one_figure_per_experiment_never_pooling_settings(board):
    """kd after pre-training is another experiment: its own figure, never a point beside the task-specific
    kd; reference lines for the teacher, fine-tuning and the majority class, labelled in the legend."""
    first, second = group_experiments(collect(board).records)
    assert (first.setting, second.setting) == ("task-specific", "after kd pre-training")
    figure = experiment_figure(first)
    assert plotted_means(figure) == [70.0, 82.0]  # finetune (one seed), kd (mean of three)
    (axis,) = figure.axes
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels == ["teacher 90.0", "fine-tune 70.0", "majority class 68.4"]
    assert plotted_means(experiment_figure(second)) == [60.0]
    # the method's colour is the same in every figure
    colours = {
        matplotlib.colors.to_hex(c.lines[0].get_color()) for c in axis.containers if c.lines[0].get_xdata()[0] == 82
    }
    assert colours == {matplotlib.colors.to_hex(method_colours(["kd"])["kd"])}


def test_committed_figures_are_drawn_from_the_committed_records(tmp_path):
    """A committed figure older than the records it draws fails here: regenerated, it would differ."""
    results = committed_results(tmp_path / "git")
    reading = read_results(results, include_bounded=PUBLISHED_INCLUDES_BOUNDED)
    fresh = experiment_plots(reading.ranked, tmp_path / "fresh")
    committed = sorted(p.name for p in (results / "plots").glob("experiment-*.svg"))
    assert committed == sorted(p.name for p in fresh)
    for path in fresh:
        assert path.read_text() == committed_text(f"results/plots/{path.name}"), f"{path.name} is stale"


def test_the_page_holds_the_tables_runs_and_figures_inline(board, tmp_path):
    page = write_site(read_results(board), tmp_path / "site").read_text()
    assert "82.0±2.0/87.0±2.0" in page  # kd's three seeds: mean ± std of accuracy/F1
    assert "majority class" in page and "68.4/81.2" in page
    assert "after kd pre-training" in page  # the second experiment, in the history (one seed)
    assert "kd-mrpc-1.json" not in page and "kdmrpc1.json (seed 1, commit abc" in page  # tooltips name runs
    assert page.count("<svg") >= 1  # the figures are inline
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["index.html"]  # nothing else written
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

    page = write_site(read_results(board), tmp_path / "site")
    browser.get(page.as_uri())
    table = browser.find_element(By.ID, "experiment-1")

    def column(name: str) -> list[str]:
        headers = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
        index = headers.index(name)
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        return [r.find_elements(By.TAG_NAME, "td")[index].text for r in rows if r.is_displayed()]

    # teacher and majority class first, then table order
    assert column("method") == ["teacher", "majority class", "finetune", "kd"]
    assert column("MRPC acc/F1") == ["90.0/92.0", "68.4/81.2", "70.0/81.0", "82.0±2.0/87.0±2.0"]
    header = next(h for h in table.find_elements(By.CSS_SELECTOR, "thead th") if h.text == "MRPC acc/F1")
    header.click()
    assert column("MRPC acc/F1") == ["68.4/81.2", "70.0/81.0", "82.0±2.0/87.0±2.0", "90.0/92.0"]
    header.click()
    assert column("method") == ["teacher", "kd", "finetune", "majority class"]
    browser.find_element(By.CSS_SELECTOR, 'input[data-table="experiment-1"]').send_keys("kd")
    assert column("method") == ["kd"]
    assert browser.save_screenshot(str(tmp_path / "screenshot.png"))
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000


def test_the_committed_page_shows_the_committed_records(browser, tmp_path):
    results = committed_results(tmp_path / "git")
    fresh = write_site(read_results(results, include_bounded=PUBLISHED_INCLUDES_BOUNDED), tmp_path / "fresh")
    assert committed_text("results/site/index.html") == fresh.read_text()
    browser.get(fresh.as_uri())
    assert "distillbench leaderboard" in browser.title
    headings = [h.text for h in browser.find_elements("css selector", "h2")]
    assert headings[0] == "Headline" and headings[1].startswith("Experiment 1: ")
    assert any(h.startswith("Experiment ") and "STS-B" in h for h in headings)


def test_every_built_in_method_has_a_colour_of_its_own():
    from distillbench import list_methods

    methods = [m for m in list_methods() if m != "logit-mse"]  # the tests' example plug-in aside
    colours = method_colours(methods)
    assert len(set(colours.values())) == len(methods)
