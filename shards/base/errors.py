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

from shards.base.distributed import is_main_process

UserError = (ValueError, FileNotFoundError, NotADirectoryError)
"""What a wrong config, path or input raises in this project (style.md: ``ValueError`` for
user mistakes, ``assert`` for internal invariants)."""


def say_error(message: str) -> None:
    """The one ``error:`` line (rank 0 only)."""
    if is_main_process():
        print(f"error: {message}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``; a user error becomes one ``error:`` line and exit status 2."""
    try:
        return main(argv)
    except UserError as e:
        say_error(str(e))
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
