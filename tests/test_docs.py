"""The documentation: a site that builds with no broken link, a README that stays short and in step
with the registry, and no path of any machine in what is committed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from distillbench.method import get_method, list_methods
from distillbench.task import get_task, list_tasks

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def built_in(names: list[str], get) -> set[str]:
    """Registered names that come with the project (the example plug-ins the tests load are not)."""
    return {n for n in names if get(n).__module__.startswith(("distillbench.methods", "distillbench.tasks"))}


def test_the_site_builds_strictly(tmp_path):
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_the_readme_is_short_and_names_every_built_in_method_and_task():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 10_000
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (.+) \|$", readme, flags=re.MULTILINE))
    methods = built_in(list_methods(), get_method)
    assert rows == {name: get_method(name).summary() for name in methods}
    listed = re.search(r"^Tasks: (.+)$", readme, flags=re.MULTILINE).group(1)
    assert set(re.findall(r"`([\w-]+)`", listed)) == built_in(list_tasks(), get_task)


def test_every_link_between_the_readmes_and_docs_resolves():
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#:]+)\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def test_no_document_holds_a_path_of_this_machine():
    pattern = re.compile(r"(/work/|/root/|/home/\w|/tmp/|\.\./shared/(?!data))")
    for document in DOCUMENTS:
        assert not pattern.search(document.read_text()), document.name
