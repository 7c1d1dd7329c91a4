"""``distillbench leaderboard --html DIR``: the leaderboard as one self-contained HTML page.

The page must open from a ``file://`` URL on a machine without internet, so everything is inline: the
tables are rendered here from the records (the same :func:`leaderboard.build_table` as the markdown
leaderboard, so both show the same cells), the plots are inline SVG, and a few lines of plain
JavaScript sort a table by a clicked header and filter its rows by a typed text. No CDN, no server.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from distillbench.efficiency import efficiency_table, read_efficiency
from distillbench.leaderboard import EXPERIMENT, aggregate, build_table, collect, reference_table, row_key, significance
from distillbench.plots import method_figures, speed_quality_figures, svg_text

VIEWS = (("task-specific", "Task-specific distillation"), ("after", "After continual pre-training"))
SCORES = (("final", "final epoch"), ("best", "best epoch"))

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
input.filter { margin: 0.25rem 0; padding: 0.2rem; width: 20rem; }
figure { display: inline-block; margin: 0 1rem 1rem 0; }
.legend, .note { color: #555; font-size: 0.85rem; }
"""


def provenance_of(records: list[dict[str, Any]]) -> dict[tuple, str]:
    """Row key → a tooltip naming every run behind the row: record, seed, commit, hardware."""
    runs: dict[tuple, list[str]] = defaultdict(list)
    for record in records:
        git = (record.get("git") or {}).get("commit") or "?"
        hardware = record.get("hardware") or {}
        where = hardware.get("gpu") or hardware.get("cpu") or "?"
        name = Path(record["_path"]).name
        runs[row_key(record)[1:]].append(f"{name} (seed {record['seed']}, commit {git[:10]}, {where})")
    return {key: "\n".join(sorted(lines)) for key, lines in runs.items()}


def table_html(table_id: str, cells: pd.DataFrame, best: set[tuple[int, str]], runs: dict[tuple, str]) -> str:
    """A sortable, filterable table; each row's method cell carries the runs behind it as a tooltip."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cells.columns)
    rows = []
    for index, row in cells.iterrows():
        key = (row["method"], *(row[e] for e in EXPERIMENT)) if "method" in cells.columns else None
        tds = []
        for column in cells.columns:
            text = html.escape(str(row[column]))
            classes = ' class="best"' if (index, column) in best else ""
            title = f' title="{html.escape(runs.get(key, ""))}"' if column == "method" else ""
            tds.append(f"<td{classes}{title}>{text}</td>")
        kind = ' class="teacher"' if key and key[0] == "teacher" else ""
        rows.append(f"<tr{kind}>{''.join(tds)}</tr>")
    return (
        f'<input class="filter" type="search" placeholder="filter rows…" data-table="{table_id}">\n'
        f'<table class="board" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def views_html(records: list[dict[str, Any]]) -> list[str]:
    """One table per (setting, score) view that has rows; cells and markers as in the markdown leaderboard."""
    parts = []
    runs = provenance_of(records)
    for setting, title in VIEWS:
        chosen = [r for r in records if row_key(r)[4].startswith(setting)]
        if not chosen:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for score, label in SCORES:
            stats = aggregate(chosen, score)
            several = {tuple(r) for r in stats[stats["n"] > 1][["task", "method", *EXPERIMENT]].itertuples(index=False)}
            marks = significance([r for r in chosen if row_key(r) in several], score)
            table = build_table(stats, markers=marks.markers)
            table_id = f"{setting}-{score}".replace(" ", "-")
            parts += [
                f"<h3>Dev set, {label}</h3>",
                table_html(table_id, table.cells, table.best, runs),
                f'<p class="legend">{html.escape(marks.legend())}</p>',
            ]
    return parts


def plots_html(records: list[dict[str, Any]], efficiency: dict[tuple[str, str], dict]) -> list[str]:
    """The method figures (one per task family) and the speed–quality figures as inline SVG, so the page
    needs no other file."""
    parts = []
    figures = [figure for score, _ in SCORES for figure in method_figures(records, score)]
    figures += speed_quality_figures(records, efficiency) if efficiency else []
    for name, figure in figures:
        svg = svg_text(figure)
        plt.close(figure)
        parts.append(f"<figure>{svg[svg.index('<svg') :]}<figcaption>{html.escape(name)}</figcaption></figure>")
    return parts


def write_site(results_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` from the records under ``results_dir``; returns its path."""
    selection = collect(results_dir)
    records = selection.records
    stats = aggregate(records, "best")
    reference = reference_table(stats, sorted({r["task"] for r in records}))
    body = [
        "<h1>distillbench leaderboard</h1>",
        f'<p class="note">Generated from the run records: {html.escape(selection.report())}. '
        "Cells: mean over seeds (±std when n &gt; 1), ×100; <b>bold</b>: best student per column; hover a "
        "method for the runs behind its row.</p>",
        *views_html(records),
        "<h2>Figures</h2>",
        *plots_html(records, read_efficiency(results_dir)),
    ]
    efficiency = efficiency_table(results_dir)
    if len(efficiency):
        body += [
            "<h2>Efficiency</h2>",
            '<p class="note">Measured by <code>distillbench efficiency</code>: fresh weights of each architecture '
            "on the task's dev examples; latency is the median of timed passes after a warm-up.</p>",
            table_html("efficiency", efficiency.astype(str), set(), {}),
        ]
    if len(reference):
        body += [
            "<h2>TED reference (not measured here) and measured − reference</h2>",
            table_html("reference", reference.astype(str), set(), {}),
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
