"""The architecture as a checked contract: the core's layers (import-linter, configured in
pyproject.toml), no import cycle, the core never importing a method or a task, and every core module
described in docs/architecture.md."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted(p for p in (ROOT / "distillbench").glob("*.py"))


def test_the_layers_contract_is_kept():
    check = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


def test_the_core_has_no_import_cycle():
    graph = grimp.build_graph("distillbench", cache_dir=None)
    core = {m for m in graph.modules if m.startswith("distillbench")}
    cycles = sorted(
        (a, b)
        for a in core
        for b in graph.find_modules_directly_imported_by(a)
        if b in core and a != b and graph.chain_exists(importer=b, imported=a)
    )
    assert cycles == []


def test_the_core_never_imports_a_method_or_a_task():
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            bad = [n for n in names if n.startswith(("distillbench.methods", "distillbench.tasks"))]
            assert not bad, f"{path.name} imports {bad}"


def test_every_core_module_is_in_the_architecture_notes():
    notes = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p.name for p in CORE if p.name not in ("__init__.py", "__main__.py") and f"`{p.name}`" not in notes]
    assert missing == []
