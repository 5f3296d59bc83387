"""The one progress display of every stage (builds, training, eval, predict, stats, benchmarks).

Every long loop asks here for its bar, so how progress is shown (a live bar on a terminal,
plain lines in a log file, nothing) is decided in one place.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = True,
    initial: int = 0,
    leave: bool = True,
) -> tqdm:
    """A progress display over ``iterable`` (or updated by hand: ``.update(n)``,
    ``.set_postfix(...)``, ``.close()``). ``enabled=False``: silent; ``None``: only on a terminal."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=None if enabled is None else not enabled,
        initial=initial,
        leave=leave,
        dynamic_ncols=True,
    )


def close_all() -> None:
    """Close every open progress display, so a final ``error:`` line starts on a line of its own
    (a bar that an exception left open would otherwise have the error appended to it)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def write_line(text: str) -> None:
    """One line on stderr that does not tear an open progress display (it is redrawn below)."""
    tqdm.write(text, file=sys.stderr)
