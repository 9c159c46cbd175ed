"""One registry type for architectures, datasets and distillation losses.

Each registry maps a name to an entry. Entries are added once, at import time, with
`add` or the `register(name)` decorator; a lookup of an unknown name raises
`UnknownNameError`, whose message is the same everywhere: the name, close matches ("did
you mean small_cnn?" for `small_cn`) and the known names (or, for a long list, a few
featured ones and the count).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# Known names listed in full up to this many; past it, the featured ones and the count.
LIST_IN_FULL = 20
# How similar a name must be (difflib's ratio) to be suggested.
SUGGEST_CUTOFF = 0.6


class UnknownNameError(ValueError):
    """An unknown registry name; the message suggests close matches and lists known ones."""


class Registry(Generic[T]):
    """Names to entries of one kind ("arch", "dataset", "loss")."""

    def __init__(
        self, kind: str, *, featured: Sequence[str] = (), everything: str | None = None
    ) -> None:
        self.kind = kind
        # Names shown first when the list is too long to show whole, and what "all" means.
        self.featured = tuple(featured)
        self.everything = everything
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`, for entries that are themselves the decorated object."""

        def deco(entry: T) -> T:
            return self.add(name, entry)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def unknown_message(self, name: str, known: Sequence[str] | None = None) -> str:
        """`unknown <kind> 'name'; did you mean ...? known: ...`. `known` overrides the
        registry's own names (a catalog that adds names of its own, say)."""
        names = sorted(known) if known is not None else self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=SUGGEST_CUTOFF)
        message = f"unknown {self.kind} {name!r}; "
        if close:
            message += f"did you mean {', '.join(close)}? "
        if len(names) <= LIST_IN_FULL or not self.featured:
            return message + f"known: {', '.join(names)}"
        shown = [n for n in self.featured if n in names]
        everything = f": {self.everything}" if self.everything else ""
        return message + (
            f"known {self.kind}s include {', '.join(shown)} ({len(names)} in all{everything})"
        )
