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

from shards.base.registry import Registry

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


def _load_builtin() -> None:
    """Import the built-in importer modules (each ends with its register_importer call)."""
    from shards import ccmusic, fma, folder, mtat  # noqa: F401


IMPORTERS: Registry[Importer] = Registry(
    "importer", builtin=_load_builtin, unknown=lambda name, known: f"source: {name!r} is not one of {known}"
)
get_importer = IMPORTERS.get
importer_names = IMPORTERS.names


def register_importer(importer: Importer) -> Importer:
    """Make ``importer.name`` a ``source`` of ``python -m shards build``."""
    return IMPORTERS.register(importer.name, importer)
