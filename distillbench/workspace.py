"""Where a user's runs land, and which records a reading command reads.

The repository's ``results/`` is the published campaign: other people compare against it, so a command
writes there only when told (``--results-dir results``, as the committed sweep files say). Everything a
user runs lands in a workspace instead — ``./distillbench-runs/`` in the working directory (git-ignored),
or ``$DISTILLBENCH_RESULTS``. Reading commands (table, compare, plot, leaderboard) read the folder they
are given; without one, the workspace when it holds run records, else the published results, and they
say which on their first line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WORKSPACE_ENV = "DISTILLBENCH_RESULTS"
DEFAULT_WORKSPACE = Path("distillbench-runs")
CACHE_ENV = "DISTILLBENCH_CACHE"
VERBOSE_ENV = "DISTILLBENCH_VERBOSE"  # set by --verbose: the Trainer's log lines and the libraries' chatter


def cache_root() -> Path:
    """Stages, teacher outputs and bootstrap results that can be rebuilt: never part of the results."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "distillbench")).expanduser()


@dataclass
class Paths:
    """Where one run writes: its record, its outputs, the cache of stages it reads and fills."""

    results_dir: Path = Path("results")
    output_dir: Path | None = None
    cache_dir: Path = field(default_factory=cache_root)
    show_progress: bool = True


def workspace() -> Path:
    """The folder a user's own runs, studies and bench records go to by default."""
    return Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser()


def published() -> Path:
    """The published campaign: ``results/`` of the checkout this package is installed from (an editable
    install), else ``results/`` in the working directory."""
    checkout = Path(__file__).resolve().parents[1] / "results"
    return checkout if (checkout / "runs").is_dir() else Path("results")


def has_records(folder: Path) -> bool:
    return any((folder / "runs").glob("*.json"))


@dataclass(frozen=True)
class Source:
    """The records folder a reading command reads, and how it was chosen (its first output line)."""

    path: Path
    why: str
    published_flag: str = ""  # when the workspace is read: the flag that reads the published campaign instead

    def line(self) -> str:
        hint = f" (for the published campaign: {self.published_flag})" if self.published_flag else ""
        return f"reading {self.why}: {_shown(self.path)}{hint}"


def reading_folder(given: Path | None) -> Source:
    """``--results-dir`` when given; else the workspace when it has run records; else the published results."""
    if given is not None:
        return Source(given, "the folder given")
    own = workspace()
    if has_records(own):
        return Source(own, "your workspace", f"--results-dir {_shown(published())}")
    return Source(published(), "the published results (your workspace has no runs yet)")


def _shown(path: Path) -> str:
    """A path as a user would type it: relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)
