"""Name → class registries for methods and tasks (style of timm / lm-evaluation-harness).

Built-in entries live in a package that is imported lazily by *name* (so the core never imports a
concrete method); third-party packages add entries through an entry-point group. Both paths end in the
same decorator, so a plug-in is indistinguishable from a built-in.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from distillbench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes with lazy discovery of built-ins and entry-point plug-ins."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@registry.register("kd")``. A name may be registered only once."""

        def decorator(obj: T) -> T:
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise UserError(f"{self.kind} {name!r}: {obj!r} is not a subclass of {self.base.__name__}")
            if name in self._entries and self._entries[name] is not obj:
                existing = self._entries[name]
                where = f"{existing.__module__}.{getattr(existing, '__qualname__', existing)}"
                raise UserError(f"{self.kind} {name!r} is already registered by {where}: choose another name")
            self._entries[name] = obj
            obj.name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    def discover(self) -> None:
        """Import every built-in module and every entry point of the group, once."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.builtin_package)
        for module in pkgutil.iter_modules(package.__path__, prefix=f"{self.builtin_package}."):
            importlib.import_module(module.name)
        for entry_point in entry_points(group=self.entry_point_group):
            entry_point.load()

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is a :class:`UserError` listing the known ones."""
        self.discover()
        if name in self._entries:
            return self._entries[name]
        known = sorted(self._entries)
        # a name with the same letters (a transposition: 'tde') first, then difflib's order of similarity
        close = sorted(difflib.get_close_matches(name, known, n=3), key=lambda c: sorted(c) != sorted(name))
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}")

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a glob pattern (``"minilm*"``)."""
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries
