"""Methods and tasks from single files (``--plugin path.py`` or ``DISTILLBENCH_PLUGINS``), like
lm-evaluation-harness's ``--include_path``: a researcher tries a method without packaging it."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from distillbench.errors import UserError

PLUGINS_ENV = "DISTILLBENCH_PLUGINS"
_loaded_from: dict[str, Path] = {}  # module name → the file it was loaded from


def load_plugin(path: str | Path) -> None:
    """Import one file; its ``@register_method`` / ``@register_task`` classes join the registries."""
    file = Path(path).expanduser()
    if file.suffix != ".py" or not file.is_file():
        raise UserError(f"--plugin {path}: not a Python file")
    name = f"distillbench_plugin_{file.stem}"
    if name in _loaded_from:
        if _loaded_from[name] != file.resolve():
            raise UserError(f"--plugin {path}: a plug-in file of the same name is loaded from {_loaded_from[name]}")
        return
    from distillbench.method import method_registry
    from distillbench.task import task_registry

    for registry in (method_registry, task_registry):  # a plug-in reusing a built-in name is caught as it registers
        registry.discover()
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except UserError as error:
        del sys.modules[name]
        raise UserError(f"--plugin {path}: {error}") from None
    except Exception as error:
        del sys.modules[name]
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"--plugin {path}: {type(error).__name__}: {detail}") from None
    _loaded_from[name] = file.resolve()


def take_plugin_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(plug-in paths, the other arguments): ``--plugin P`` / ``--plugin=P`` anywhere on the line, then
    the ``os.pathsep``-separated ``DISTILLBENCH_PLUGINS``."""
    paths, rest, position = [], [], 0
    while position < len(argv):
        argument = argv[position]
        if argument == "--plugin":
            if position + 1 >= len(argv):
                raise UserError("--plugin needs a path")
            paths.append(argv[position + 1])
            position += 2
            continue
        if argument.startswith("--plugin="):
            paths.append(argument.removeprefix("--plugin="))
        else:
            rest.append(argument)
        position += 1
    paths += [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
    return paths, rest
