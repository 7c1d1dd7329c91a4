"""Declared ranges and help for every setting, checked in one place before anything is written.

A hyper-parameter, training setting or task option declares its valid values next to its default
(``field(default=…, metadata=rule(gt=0, help=…))``), so ``epochs=0`` or ``temperature=-2`` is one
``error:`` line at plan time instead of an untrained student or a NaN loss in a record that looks real.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from distillbench.errors import UserError


def rule(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
    allow: tuple[Any, ...] = (),
    help: str = "",
) -> dict[str, Any]:
    """Field metadata: bounds (``allow`` lists extra valid values, e.g. ``-1`` for "no limit")."""
    checks = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices}
    return {"check": {k: v for k, v in checks.items() if v is not None} | {"allow": allow}, "help": help}


def setting(default: Any, **kwargs: Any) -> Any:
    """``dataclasses.field`` with a :func:`rule`."""
    return dataclasses.field(default=default, metadata=rule(**kwargs))


BOUNDS = {"gt": (">", lambda v, b: v > b), "ge": ("≥", lambda v, b: v >= b), "lt": ("<", lambda v, b: v < b)}
BOUNDS["le"] = ("≤", lambda v, b: v <= b)


def violation(name: str, value: Any, check: dict[str, Any]) -> str | None:
    """Why ``value`` breaks ``check`` (None: it does not)."""
    if value is None or value in check.get("allow", ()):
        return None
    if "choices" in check and value not in check["choices"]:
        return f"{name}={value}: must be one of {', '.join(map(str, check['choices']))}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}={value}: must be a finite number"
    failed = [
        f"{symbol} {check[key]}" for key, (symbol, ok) in BOUNDS.items() if key in check and not ok(value, check[key])
    ]
    if failed:
        extra = f" (or {', '.join(map(str, check['allow']))})" if check.get("allow") else ""
        return f"{name}={value}: must be {' and '.join(failed)}{extra}"
    return None


def check_fields(instance: Any, what: str, flags: dict[str, str] | None = None) -> None:
    """Raise one :class:`UserError` line for the first field of ``instance`` outside its declared rule,
    named by ``what`` or, for a field the command line sets with a flag of its own, by that flag."""
    for item in dataclasses.fields(instance):
        check = item.metadata.get("check")
        problem = check and violation(item.name, getattr(instance, item.name), check)
        if problem:
            raise UserError(f"{(flags or {}).get(item.name, what)}: {problem}")


def help_of(item: dataclasses.Field) -> str:
    return item.metadata.get("help", "")
