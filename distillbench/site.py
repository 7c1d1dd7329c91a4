"""``distillbench leaderboard --html DIR``: the leaderboard as one self-contained HTML page.

The page must open from a ``file://`` URL on a machine without internet, so everything is inline: the
tables come from the same reading as the markdown leaderboard (:func:`report.read_results`: the same
experiments, cells and findings), the figures are inline SVG, and a few lines of plain JavaScript sort a
table by a clicked header and filter its rows by a typed text. No CDN, no server. It opens with the
headline, then one section per ranked experiment; history, efficiency and the reference are collapsed.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.colors import to_hex

from distillbench.efficiency import efficiency_table, read_efficiency
from distillbench.experiments import (
    BUDGET_LEGEND,
    MAJORITY,
    NOTHING_RANKED,
    Experiment,
    findings_legend,
    findings_table,
    has_costs,
    headline,
    headline_intro,
    headline_legend,
    headline_lines,
    history_table,
    n_legend,
    score_table,
)
from distillbench.labels import row_key
from distillbench.leaderboard import aggregate
from distillbench.markers import Significance
from distillbench.plots import cost_figure, experiment_figure, method_colours, speed_quality_figures, svg_text
from distillbench.reference import reference_table
from distillbench.report import Reading
from distillbench.task import eval_set_note, scale_note

REFERENCE_ROWS = {"teacher": "teacher", MAJORITY: "reference"}  # row label → its CSS class

SCRIPT = """
document.querySelectorAll("table.board").forEach(function (table) {
  var body = table.tBodies[0];
  table.querySelectorAll("th").forEach(function (header, column) {
    header.addEventListener("click", function () {
      var ascending = header.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].textContent, y = b.cells[column].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        if (isNaN(nx) !== isNaN(ny)) { order = isNaN(nx) ? 1 : -1; }
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
document.querySelectorAll("input.filter").forEach(function (input) {
  input.addEventListener("input", function () {
    var needle = input.value.toLowerCase();
    var table = document.getElementById(input.dataset.table);
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      row.hidden = needle !== "" && row.textContent.toLowerCase().indexOf(needle) < 0;
    });
  });
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f2f2f2; cursor: pointer; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td.best { font-weight: bold; }
tr.teacher { background: #fafae8; }
tr.reference { background: #f4f4f4; color: #555; }
.swatch { display: inline-block; width: 0.7rem; height: 0.7rem; margin-right: 0.35rem; border-radius: 2px; }
details { margin: 1rem 0; }
summary { cursor: pointer; font-weight: 600; }
figure { display: block; }
figure svg { max-width: 100%; height: auto; }
input.filter { margin: 0.25rem 0; padding: 0.2rem; width: 20rem; }
figure { display: inline-block; margin: 0 1rem 1rem 0; }
.legend, .note { color: #555; font-size: 0.85rem; }
"""


def provenance_of(records: list[dict[str, Any]]) -> dict[str, str]:
    """Row label (method) → a tooltip naming every run behind the row: record, seed, commit, hardware."""
    runs: dict[str, list[str]] = defaultdict(list)
    for record in records:
        git = (record.get("git") or {}).get("commit") or "?"
        hardware = record.get("hardware") or {}
        where = hardware.get("gpu") or hardware.get("cpu") or "?"
        name = Path(record["_path"]).name
        runs[row_key(record)[1]].append(f"{name} (seed {record['seed']}, commit {git[:10]}, {where})")
    return {key: "\n".join(sorted(lines)) for key, lines in runs.items()}


def table_html(
    table_id: str,
    cells: pd.DataFrame,
    best: set[tuple[int, str]] = frozenset(),
    runs: dict[str, str] | None = None,
    colours: dict[str, str] | None = None,
) -> str:
    """A sortable, filterable table; a method cell carries its colour (as in the figures) and the runs
    behind its row as a tooltip."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cells.columns)
    rows = []
    for index, row in cells.iterrows():
        method = str(row["method"]) if "method" in cells.columns else None
        tds = []
        for column in cells.columns:
            text = html.escape(str(row[column]))
            classes = ' class="best"' if (index, column) in best else ""
            title = ""
            if column == "method":
                title = f' title="{html.escape((runs or {}).get(method, ""))}"'
                colour = (colours or {}).get(method)
                if colour:
                    text = f'<span class="swatch" style="background:{colour}"></span>{text}'
            tds.append(f"<td{classes}{title}>{text}</td>")
        kind = f' class="{REFERENCE_ROWS[method]}"' if method in REFERENCE_ROWS else ""
        rows.append(f"<tr{kind}>{''.join(tds)}</tr>")
    return (
        f'<input class="filter" type="search" placeholder="filter rows…" data-table="{table_id}">\n'
        f'<table class="board" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def figure_html(figure: plt.Figure, caption: str) -> str:
    svg = svg_text(figure)
    plt.close(figure)
    return f"<figure>{svg[svg.index('<svg') :]}<figcaption>{html.escape(caption)}</figcaption></figure>"


def headline_html(reading: Reading) -> list[str]:
    lead = reading.lead
    if lead is None:
        return [f"<p>{NOTHING_RANKED}</p>"]
    marks = reading.marks[lead.number]
    lines = "".join(f"<li>{_inline_markdown(line.removeprefix('- '))}</li>" for line in headline_lines(lead, marks))
    cells = headline(lead, marks)
    return [
        f"<p>{html.escape(headline_intro(lead))}</p>",
        table_html("headline", cells, colours=_colours(cells)),
        f'<p class="legend">{html.escape(headline_legend(marks))}</p>',
        f"<ul>{lines}</ul>",
    ]


def experiment_html(experiment: Experiment, marks: Significance) -> list[str]:
    table = score_table(experiment, "final", marks)
    findings = findings_table(marks)
    parts = [
        f'<h2 id="section-{experiment.number}">{html.escape(experiment.title())}</h2>',
        figure_html(experiment_figure(experiment), f"experiment {experiment.number}: 95% CI over seeds"),
        *(
            [figure_html(cost_figure(experiment), f"experiment {experiment.number}: score against training cost")]
            if has_costs(experiment)
            else []
        ),
        table_html(
            f"experiment-{experiment.number}",
            table.cells,
            table.best,
            provenance_of(experiment.records),
            _colours(table.cells),
        ),
        f'<p class="legend">Final epoch, {eval_set_note(experiment.tasks)}. Cells: mean ± std over seeds, '
        f"{scale_note(experiment.tasks)}; {n_legend(table.cells)}; <b>bold</b>: best student per column. "
        f"{html.escape(marks.legend())} {html.escape(BUDGET_LEGEND)}</p>",
    ]
    hand_set = experiment.hand_set()
    if hand_set:
        parts.append(f'<p class="legend">{html.escape(hand_set)}</p>')
    if len(findings):
        parts += [
            table_html(f"findings-{experiment.number}", findings, colours=_colours(findings)),
            f'<p class="legend">{html.escape(findings_legend(marks))}</p>',
        ]
    return parts


def _colours(cells: pd.DataFrame) -> dict[str, str]:
    methods = [m for m in cells["method"] if m not in REFERENCE_ROWS] if "method" in cells.columns else []
    return {method: to_hex(colour) for method, colour in method_colours(methods).items()}


def _inline_markdown(text: str) -> str:
    """``**bold**`` of a generated line as HTML, everything else escaped."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{part}</b>" if i % 2 else part for i, part in enumerate(parts))


def write_site(reading: Reading, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` — and nothing else — from a reading of a results folder."""
    records = reading.selection.records
    body = [
        "<h1>distillbench leaderboard</h1>",
        f'<p class="note">Generated from the run records under <code>{html.escape(reading.results_dir.name)}/runs/'
        f"</code>: {html.escape(reading.selection.report())}. "
        "Hover a method for the runs behind its row; click a header to sort.</p>",
        "<h2>Headline</h2>",
        *headline_html(reading),
    ]
    for experiment in reading.ranked:
        body += experiment_html(experiment, reading.marks[experiment.number])
    if reading.history:
        body += [
            "<details><summary>Single runs and history (one seed or a bounded budget: no error bar, no test)</summary>",
            table_html("history", history_table(reading.history, "final").astype(str)),
            "</details>",
        ]
    efficiency = read_efficiency(reading.results_dir)
    speed = speed_quality_figures([r for e in reading.ranked for r in e.records], efficiency) if efficiency else []
    table = efficiency_table(reading.results_dir)
    if len(table):
        body += [
            "<details><summary>Efficiency</summary>",
            '<p class="note">Measured by <code>distillbench efficiency</code>: fresh weights of each architecture '
            "on the task's dev examples; latency is the median of timed passes after a warm-up.</p>",
            *(figure_html(figure, name) for name, figure in speed),
            table_html("efficiency", table.astype(str)),
            "</details>",
        ]
    reference = reference_table(aggregate(records, "best"), sorted({r["task"] for r in records}))
    if len(reference):
        body += [
            "<details><summary>TED reference (not measured here) and measured − reference</summary>",
            table_html("reference", reference.astype(str)),
            "</details>",
        ]
    data = {"records": [Path(r["_path"]).name for r in records]}
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>distillbench leaderboard</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f'\n<script type="application/json" id="records">{html.escape(json.dumps(data))}</script>'
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page)
    return path


def headless_chromium(binary: str, driver: str) -> Any:
    """A headless Chromium driven by Selenium, from local executables only (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def screenshot(page: Path, out: Path, binary: str, driver: str) -> Path:
    """A PNG of ``page`` as headless Chromium renders it."""
    browser = headless_chromium(binary, driver)
    try:
        browser.get(page.resolve().as_uri())
        browser.save_screenshot(str(out))
    finally:
        browser.quit()
    return out
