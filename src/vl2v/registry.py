"""Explicit name -> factory registries filled by a decorator (timm style).

Every pluggable family (datasets, teachers, students, algorithms) has one
``Registry``. Look-ups are case-insensitive and an unknown name raises a
``KeyError`` subclass that lists what is available and the closest matches.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from vl2v.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """Raised for a name that is not in a registry; the message says what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T


class Registry(Generic[T]):
    """A named collection of factories or classes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            low = key.lower()
            if low in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[low] = Entry(key, obj)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin unloaded, a test's stand-in entry removed after the test); no error if absent."""
        self._entries.pop(name.lower(), None)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name.lower()]
        except KeyError:
            names = self.names()
            close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names)}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def canonical(self, name: str) -> str:
        return self.entry(name).name

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values()]

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
