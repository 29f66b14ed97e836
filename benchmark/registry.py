"""Listable registries of methods and backbones, filled through the plugin hooks."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Generic, TypeVar

from benchmark.errors import BenchmarkError, PluginContractError

T = TypeVar("T")


class DuplicateNameError(PluginContractError):
    """Two plugins registered the same name."""


class UnknownNameError(BenchmarkError):
    """A name that no plugin registered."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    obj: T
    source: str  # the plugin that registered it


class Registry(Generic[T]):
    """Name -> object, with the plugin each came from; a duplicate name raises."""

    def __init__(self, kind: str, base: type, required: tuple[str, ...] = ("name", "version")):
        self.kind = kind
        self.base = base
        self.required = required
        self._entries: dict[str, Entry[T]] = {}

    def add(self, obj: T, source: str) -> None:
        if not isinstance(obj, self.base):
            raise PluginContractError(
                f"plugin {source!r} registered {obj!r} as a {self.kind}, but it is not a {self.base.__qualname__}"
            )
        missing = [f for f in self.required if not isinstance(getattr(obj, f, None), str) or not getattr(obj, f)]
        if missing:
            raise PluginContractError(
                f"plugin {source!r} registered a {self.kind} without required field(s) {', '.join(missing)}"
            )
        name = obj.name
        if name in self._entries:
            raise DuplicateNameError(
                f"{self.kind} {name!r} registered twice: by {self._entries[name].source!r} and by {source!r}"
            )
        self._entries[name] = Entry(obj, source)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def select(self, spec: str) -> list[str]:
        """Expand ``all`` (the entries whose ``in_all`` is not False) or a comma-separated list into validated
        names, in the given order."""
        if spec.strip() == "all":
            return [name for name in self.names() if getattr(self.get(name), "in_all", True)]
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise UnknownNameError(f"no {self.kind} given; available: {', '.join(self.names())}")
        for name in names:
            self.entry(name)
        return names
