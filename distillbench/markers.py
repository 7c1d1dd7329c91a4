"""Significance markers of one table: every method against the baselines, Holm-corrected together.

The comparisons themselves (paired bootstrap, test across seeds) are :mod:`significance`'s; this module
decides which are made, corrects them as one family, and turns them into cell markers and a legend —
listing any comparison that could not be made instead of dropping it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from distillbench.errors import UserError
from distillbench.labels import row_key
from distillbench.method import baseline_methods
from distillbench.significance import ALPHA, DEFAULT_RESAMPLES, Comparison, compare_records, holm
from distillbench.task import get_task

MARKS = (("†", "‡"), ("⁺", "⁻"))  # better / worse than the first baseline, then the second


def marked_baselines() -> list[str]:
    """The baselines a table marks cells against (one pair of markers each)."""
    return baseline_methods()[: len(MARKS)]


@dataclass(frozen=True)
class Finding:
    """One method against one baseline on one task of one experiment: the comparison, its p-value after
    Holm's correction over its table, and which baseline (0: the first, 1: the second) it was against."""

    key: tuple
    comparison: Comparison
    position: int
    adjusted_p: float

    @property
    def significant(self) -> bool:
        """Below 0.05 after Holm, and by more than its Monte-Carlo error: an unsettled p earns no marker,
        so no marker depends on the bootstrap's seed."""
        return self.adjusted_p < ALPHA and not self.unsettled

    @property
    def better(self) -> bool:
        return (self.comparison.bootstrap.difference > 0) == get_task(self.key[0]).greater_is_better

    @property
    def unsettled(self) -> bool:
        """Within twice its Monte-Carlo error of the threshold after Holm's correction (which multiplies the
        p, and so its error): another bootstrap seed could flip the marker."""
        boot = self.comparison.bootstrap
        if not boot.p_value or self.adjusted_p >= 1:
            return False
        return abs(self.adjusted_p - ALPHA) < 2 * (self.adjusted_p / boot.p_value) * boot.p_error


@dataclass
class Significance:
    """Cell markers from paired bootstraps against the baselines, Holm-corrected over one table, and every
    comparison that could not be made with its reason (never dropped silently)."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[tuple[tuple, str, str]] = field(default_factory=list)  # (row key, baseline, reason)

    @property
    def markers(self) -> dict[tuple, str]:
        marks: dict[tuple, str] = {}
        for finding in self.findings:
            if finding.significant:
                marks[finding.key] = marks.get(finding.key, "") + MARKS[finding.position][0 if finding.better else 1]
        return marks

    def legend(self) -> str:
        if not self.findings and not self.skipped:
            return f"No significance markers: no baseline ({', '.join(marked_baselines())}) ran beside these rows."
        if not self.findings:
            return "No significance markers." + self.skipped_note()
        names = marked_baselines()
        marks = "; ".join(
            f"{up} / {down}: better / worse than {name}" for (up, down), name in zip(MARKS, names, strict=False)
        )
        resamples = min(f.comparison.bootstrap.resamples for f in self.findings)
        return (
            f"{marks}, on each task's main metric — paired bootstrap over dev examples ({resamples:,} resamples, "
            f"{REFINED_RESAMPLES}× for a p near the threshold; seed pairs averaged), "
            f"Holm-corrected over the {len(self.findings)} comparisons of this table, p < {ALPHA} by more than "
            "twice its Monte-Carlo error."
        ) + self.skipped_note()

    def skipped_note(self) -> str:
        if not self.skipped:
            return ""
        return f" {len(self.skipped)} comparison(s) could not be made and are not counted: " + "; ".join(
            f"{key[0]} {key[1]} vs {baseline}: {why}" for key, baseline, why in self.skipped
        )


REFINED_RESAMPLES = 10  # an unsettled comparison is recomputed with this many times the resamples


def significance(
    records: list[dict[str, Any]],
    score: str,
    resamples: int = DEFAULT_RESAMPLES,
    progress: bool = False,
    seed: int = 0,
) -> Significance:
    """Compare every method with every baseline of the same task and experiment (teacher, student,
    setting) on the main metric; Holm's correction over all of them; a cell whose corrected p is below
    0.05 gets a marker. A comparison whose corrected p lies within its Monte-Carlo error of 0.05 is
    recomputed with ten times the resamples, so a marker does not depend on the bootstrap's ``seed``.
    A bar shows the bootstraps being computed (cached ones take no time)."""
    from tqdm.auto import tqdm

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[row_key(record)].append(record)
    result = Significance()
    baselines = marked_baselines()
    planned = []
    for position, baseline in enumerate(baselines):
        for key, members in groups.items():
            task, method, *experiment = key
            base = groups.get((task, baseline, *experiment))
            if method == "teacher" or method in baselines[: position + 1] or not base:
                continue  # an earlier baseline was already compared with this one
            planned.append((key, members, base, position, baseline))
    made = []
    for key, members, base, position, baseline in tqdm(
        planned, desc="significance", unit="comparison", disable=not progress or None, leave=False
    ):
        missing = [r.get("run_id") for r in [*members, *base] if not r.get("predictions")]
        if missing:
            result.skipped.append((key, baseline, f"no stored predictions in {', '.join(map(str, missing))}"))
            continue
        try:
            made.append((key, compare_records(members, base, score, resamples, seed), position, members, base))
        except UserError as error:
            result.skipped.append((key, baseline, str(error)))
    result.findings = corrected(made)
    unsettled = [index for index, finding in enumerate(result.findings) if finding.unsettled]
    for index in unsettled:
        key, _, position, members, base = made[index]
        refined = compare_records(members, base, score, resamples * REFINED_RESAMPLES, seed)
        made[index] = (key, refined, position, members, base)
    if unsettled:
        result.findings = corrected(made)
    return result


def corrected(made: list[tuple]) -> list[Finding]:
    """Findings with Holm's correction over all the comparisons made."""
    adjusted = holm([comparison.bootstrap.p_value for _, comparison, *_ in made])
    return [
        Finding(key, comparison, position, p) for (key, comparison, position, *_), p in zip(made, adjusted, strict=True)
    ]
