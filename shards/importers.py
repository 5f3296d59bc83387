"""The importer registry: a dataset name -> how to read it, which options it takes and
which label tasks it can produce.

Each importer module declares its own options dataclass and ends with one explicit
``register_importer(Importer(...))`` call; ``shards.config.BuildConfig`` holds only the
options every build shares plus the chosen importer's ``options``. Adding a dataset is
one new module plus its line in ``_load_builtin`` (or, from outside, one
``register_importer`` call before ``python -m shards`` parses its arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shards.config import BuildConfig
    from shards.records import Dataset


@dataclass(kw_only=True)
class ImporterOptions:
    """Base of every importer's own options (``[shards]`` keys / CLI flags only it reads)."""

    def check(self, cfg: BuildConfig) -> None:
        """Refuse combinations with the shared settings (e.g. an option that needs a task);
        ``__post_init__`` checks the options alone. Called by ``BuildConfig``."""


@dataclass(kw_only=True)
class LabelFileOptions(ImporterOptions):
    """Options of an importer that reads one label file."""

    csv: str | None = None
    """Label file relative to root; None = the importer's own default path."""


@dataclass(frozen=True)
class Importer:
    """One registered dataset importer."""

    name: str
    load: Callable[[BuildConfig], Dataset]
    """Parse the source's metadata into records (the builder decodes and writes)."""
    options: type[ImporterOptions] = ImporterOptions
    """Its options dataclass (``BuildConfig.options`` is one of these)."""
    tasks: tuple[str, ...] = ("single",)
    """Label tasks it can produce; the first is its natural task (``--task`` unset)."""


_IMPORTERS: dict[str, Importer] = {}


def register_importer(importer: Importer) -> Importer:
    if importer.name in _IMPORTERS:
        raise ValueError(f"importer {importer.name!r} registered twice")
    _IMPORTERS[importer.name] = importer
    return importer


def unregister_importer(name: str) -> None:
    """Forget an importer (tests that register their own)."""
    _IMPORTERS.pop(name, None)


def get_importer(name: str) -> Importer:
    _load_builtin()
    if name not in _IMPORTERS:
        raise ValueError(f"source: {name!r} is not one of {importer_names()}")
    return _IMPORTERS[name]


def importer_names() -> list[str]:
    _load_builtin()
    return list(_IMPORTERS)


_loaded = False


def _load_builtin() -> None:
    """Import the built-in importer modules (each ends with its register_importer call)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from shards import ccmusic, fma, folder, mtat  # noqa: F401
