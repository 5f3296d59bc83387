"""User mistakes at every CLI: one ``error:`` line on stderr, exit status 2, printed once.

Under torchrun or SLURM every rank hits the same config mistake; only rank 0 prints it,
so the user reads one line instead of a traceback per rank. Internal failures (anything
that is not a ``UserError`` type below) keep their traceback: they are bugs to report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from shards.base.atomic import WriteError
from shards.base.distributed import is_main_process
from shards.base.progress import close_all, write_line

UserError = (ValueError, FileNotFoundError, NotADirectoryError, WriteError)
"""What a wrong config, path or input raises in this project (style.md: ``ValueError`` for
user mistakes, ``assert`` for internal invariants), and a write the machine refused (a full
disk, an I/O error: ``shards.base.atomic.WriteError``)."""


def say_error(message: str, *, every_rank: bool = False) -> None:
    """The one ``error:`` line (rank 0 only, unless the fault is this rank's alone)."""
    if every_rank or is_main_process():
        close_all()
        print(f"error: {message}", file=sys.stderr, flush=True)


def say_warning(message: str) -> None:
    """One ``warning:`` line (rank 0 only): something was skipped and the run goes on."""
    if is_main_process():
        write_line(f"warning: {message}")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``; a user error becomes one ``error:`` line and exit status 2."""
    try:
        return main(argv)
    except UserError as e:
        # a fault only one rank saw (a shard it read) sets ``every_rank``: no rank 0 knows it
        say_error(str(e), every_rank=bool(getattr(e, "every_rank", False)))
        return 2


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line (rank 0 only), exit status 2."""

    def error(self, message: str) -> NoReturn:
        say_error(f"{self.prog}: {message} (see {self.prog} --help)")
        sys.exit(2)


def first_line(e: BaseException) -> str:
    """An exception's first line of text (its type name when it has none), for a one-line reason."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
