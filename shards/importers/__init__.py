"""Raw dataset -> records: one module per dataset, the registry, records and reject reasons.

A dataset name maps to how to read it, which options it takes and which label tasks it can
produce. Each importer module declares its own options dataclass and ends with one explicit
``register_importer(Importer(...))`` call. Importers read a build's settings through
``ImportSettings`` (``shards.builder.config.BuildConfig`` is one), never the builder itself, so
this room imports only ``shards.base``. Adding a dataset is one new module plus its line in
``_load_builtin`` (or, from outside, one ``register_importer`` call before ``python -m shards``
parses its arguments).

- ``fma``, ``mtat``, ``ccmusic``, ``folder``: the importers (``hf_layout``: the Hugging Face
  file layout ccmusic ships in);
- ``records``: what an importer yields (``Record``, ``Reject``, ``Dataset``) and the CSV helpers;
- ``reasons``: the words of every reject reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from shards.base.registry import Registry

if TYPE_CHECKING:
    from shards.base.tasks import TaskKind
    from shards.importers.records import Dataset

OptionsT = TypeVar("OptionsT", bound="ImporterOptions")


class ImportSettings(Protocol):
    """The few build settings an importer reads (``BuildConfig`` satisfies it)."""

    source: str
    root: Path
    task: TaskKind | None
    seed: int
    force: bool

    @property
    def local_out(self) -> Path:
        """The build folder, local (ccmusic extracts its archives there)."""
        ...

    @property
    def num_workers(self) -> int:
        """Processes/threads an importer may use (FMA's checksum pass)."""
        ...

    def importer_options(self, cls: type[OptionsT]) -> OptionsT:
        """The importer's own options, as its class."""
        ...


@dataclass(kw_only=True)
class ImporterOptions:
    """Base of every importer's own options (``[shards]`` keys / CLI flags only it reads)."""

    def check(self, cfg: ImportSettings) -> None:
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
    load: Callable[[ImportSettings], Dataset]
    """Parse the source's metadata into records (the builder decodes and writes)."""
    options: type[ImporterOptions] = ImporterOptions
    """Its options dataclass (``BuildConfig.options`` is one of these)."""
    tasks: tuple[str, ...] = ("single",)
    """Label tasks it can produce; the first is its natural task (``--task`` unset)."""


def _load_builtin() -> None:
    """Import the built-in importer modules (each ends with its register_importer call)."""
    from shards.importers import ccmusic, fma, folder, mtat  # noqa: F401


IMPORTERS: Registry[Importer] = Registry(
    "importer", builtin=_load_builtin, unknown=lambda name, known: f"source: {name!r} is not one of {known}"
)
get_importer = IMPORTERS.get
importer_names = IMPORTERS.names


def register_importer(importer: Importer) -> Importer:
    """Make ``importer.name`` a ``source`` of ``python -m shards build``."""
    return IMPORTERS.register(importer.name, importer)
