"""User mistakes at every CLI: one ``error:`` line on stderr, exit status 2, printed once.

Under torchrun or SLURM every rank hits the same config mistake; only rank 0 prints it,
so the user reads one line instead of a traceback per rank. Internal failures (anything
that is not a ``UserError`` type below) keep their traceback: they are bugs to report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from shards.base import logs, progress
from shards.base.atomic import WriteError
from shards.base.distributed import is_main_process
from shards.base.progress import close_all, write_line

UserError = (ValueError, FileNotFoundError, NotADirectoryError, WriteError)
"""What a wrong config, path or input raises in this project (docs/architecture.md, Conventions: ``ValueError`` for
user mistakes, ``assert`` for internal invariants), and a write the machine refused (a full
disk, an I/O error: ``shards.base.atomic.WriteError``)."""


def say_error(message: str, *, every_rank: bool = False) -> None:
    """The one ``error:`` line (rank 0 only, unless the fault is this rank's alone)."""
    if every_rank or is_main_process():
        close_all()
        print(f"error: {logs.redact(message)}", file=sys.stderr, flush=True)


def say_warning(message: str) -> None:
    """One ``warning:`` line (rank 0 only): something was skipped and the run goes on. Through
    the one logging configuration when a CLI set it up (``shards.base.logs``), else straight to
    stderr (library use), the same line either way."""
    if logs.configured():
        logs.get_logger().warning(message)
    elif is_main_process():
        write_line(f"warning: {message}")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)`` with the one logging configuration (``shards.base.logs``); a user error
    becomes one ``error:`` line and exit status 2."""
    logs.setup_logging()
    try:
        return main(argv)
    except UserError as e:
        # a fault only one rank saw (a shard it read) sets ``every_rank``: no rank 0 knows it
        say_error(str(e), every_rank=bool(getattr(e, "every_rank", False)))
        return 2


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line (rank 0 only), exit status 2, and
    which gives every CLI (and subcommand) ``--progress auto|bar|lines|none``
    (``shards.base.progress``; set for this process and the processes it starts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--progress",
            choices=progress.MODES,
            default=argparse.SUPPRESS,  # a subcommand's parser must not reset the top level's choice
            help="progress display: a live bar (terminal), plain lines every "
            f"${progress.ENV_INTERVAL} s (default {progress.DEFAULT_INTERVAL_S:g}; log files, pipes), "
            "none; auto (default) picks bar or lines by whether stderr is a terminal",
        )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(ns, "progress", None):
            progress.set_mode(ns.progress)
        return ns, rest

    def error(self, message: str) -> NoReturn:
        say_error(f"{self.prog}: {message} (see {self.prog} --help)")
        sys.exit(2)


def first_line(e: BaseException) -> str:
    """An exception's first line of text (its type name when it has none), for a one-line reason."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
