"""One registry mechanism: a name -> thing table that built-in modules and users add to.

Used by the dataset importers (``shards.importers``), the feature channels
(``pipelines.channels``) and the model families (``train.models.registry``): each
registers with one explicit call, and a name registered twice is an error, not a silent
replacement. ``builtin`` (optional) imports the modules that register the built-ins, on
first use, so importing the registry itself stays cheap and cycle-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> ``T`` in registration order."""

    def __init__(
        self,
        what: str,
        *,
        unknown: Callable[[str, list[str]], str] | None = None,
        builtin: Callable[[], None] | None = None,
    ) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._unknown = unknown or (lambda name, known: f"unknown {what} {name!r}; registered: {known}")
        self._builtin = builtin

    def _ready(self) -> None:
        if self._builtin is not None:
            load, self._builtin = self._builtin, None
            load()

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``; a name already taken is a ``ValueError``. (No built-in
        loading here: the built-in modules call this while they are being imported.)"""
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests that register their own)."""
        self._items.pop(name, None)

    def find(self, name: str) -> T | None:
        self._ready()
        return self._items.get(name)

    def get(self, name: str) -> T:
        """The item; an unknown name is a ``ValueError`` with the registry's own message."""
        item = self.find(name)
        if item is None:
            raise ValueError(self._unknown(name, self.names()))
        return item

    def names(self) -> list[str]:
        self._ready()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._ready()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
