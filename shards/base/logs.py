"""One logging configuration for every CLI: short lines on stderr, once per job, not once per rank.

``run_cli`` calls ``setup_logging`` before a CLI's ``main``, so every entry point (``python -m
shards|pipelines.bench|pipelines.stats|train|eval|...``, under torchrun or SLURM too) writes:

- ``warning: ...`` for Python warnings (``warnings.warn`` anywhere, libraries included: routed
  through logging) and ``log.warning``; info lines (``log.info``) as they are;
- from rank 0 only: every rank hits the same config warning, the job's log holds it once. A
  message that differs per rank is logged with ``extra=PER_RANK`` (or ``log_per_rank``) and
  shows on every rank, prefixed ``[rank N]``; ``MUSICSTREAM_LOG_RANKS=all`` shows every rank's
  messages (debugging a hang);
- one line each: an info line at most ``MAX_LINE`` characters (log viewers, ``grep``); a
  warning keeps its reason (it names the fix) up to ``MAX_WARNING``, cut in the middle beyond;
- never a credential: the formatter applies ``redact`` (the environment's keys, the ones
  resolved from a profile or instance metadata that ``remember_secrets`` was told, and any
  ``user:secret@`` of a URL) to every line, a library's warnings included.

Errors keep their own path (``shards.base.errors.say_error``: one ``error:`` line from rank 0).
Library code only creates loggers (``get_logger``); it never configures logging.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import TextIO

from shards.base.distributed import env_rank
from shards.base.progress import write_line

ROOT = "musicstream"
ENV_RANKS = "MUSICSTREAM_LOG_RANKS"
MAX_LINE = 400
MAX_WARNING = 1000
PER_RANK = {"per_rank": True}
"""``log.warning(msg, extra=PER_RANK)``: this message differs per rank; every rank shows it."""
SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
"""Environment variables whose values never appear in an error line, log or stored file."""
_SECRETS: set[str] = set()


def remember_secrets(*values: str | None) -> None:
    """Credential values resolved elsewhere than the environment (a profile, instance metadata):
    ``redact`` removes them too, from now on, in this process."""
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    """``text`` with every known credential value and any ``user:secret@`` of a URL as ``***``."""
    env = (os.environ.get(name) for name in SECRET_VARS)
    for value in {v for v in env if v and len(v) >= 4} | _SECRETS:
        text = text.replace(value, "***")
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


def get_logger(name: str = "") -> logging.Logger:
    """The project's logger (``musicstream`` or ``musicstream.NAME``)."""
    return logging.getLogger(f"{ROOT}.{name}" if name else ROOT)


def log_per_rank(logger: logging.Logger, level: int, message: str) -> None:
    """Log a message that differs per rank: shown on every rank, prefixed with it."""
    logger.log(level, message, extra=PER_RANK)


class RankFilter(logging.Filter):
    """Rank 0's records; other ranks' only when marked per-rank (or ``MUSICSTREAM_LOG_RANKS=all``),
    then prefixed with the rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank, world, _ = env_rank()
        every = getattr(record, "per_rank", False) or os.environ.get(ENV_RANKS, "").lower() == "all"
        record.rank_prefix = f"[rank {rank}] " if every and world > 1 else ""
        return rank == 0 or every


class LineFormatter(logging.Formatter):
    """``warning: message`` (``error:``, ``debug:`` likewise), an info line as it is; one line
    (lengths: the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        text = redact(" ".join(record.getMessage().split()))
        if record.exc_info:
            text += f" ({redact(self.formatException(record.exc_info).strip().splitlines()[-1])})"
        if record.levelno != logging.INFO:
            text = f"{record.levelname.lower()}: {text}"
        text = getattr(record, "rank_prefix", "") + text
        if record.levelno <= logging.INFO:
            return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
        if len(text) <= MAX_WARNING:
            return text
        head = MAX_WARNING * 2 // 3  # where it happened and what, then how it ends (the fix)
        return text[:head] + " ... " + text[-(MAX_WARNING - head - 5) :]


class StderrHandler(logging.Handler):
    """Writes each record as one line to whatever ``sys.stderr`` is at the time (pytest's capture,
    a redirected stream), without tearing a live progress bar (``progress.write_line``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` through logging: our own warnings as their message, a library's
    with its category and where it came from."""
    text = str(message)
    if category is not UserWarning or not _ours(filename):
        text = f"{text} ({category.__name__}, {Path(filename).name}:{lineno})"
    logging.getLogger(f"{ROOT}.warnings").warning(text)


def _ours(filename: str) -> bool:
    root = Path(__file__).resolve().parents[2]
    try:
        Path(filename).resolve().relative_to(root)
    except ValueError:
        return False
    return True


def configured() -> bool:
    """Whether ``setup_logging`` ran in this process (a CLI), so the project's lines go through it."""
    return any(isinstance(h, StderrHandler) for h in logging.getLogger().handlers)


def setup_logging(level: int = logging.INFO) -> None:
    """Configure logging once for a CLI process (idempotent): the rank-aware stderr handler on
    the root logger (libraries' warnings included), project info lines shown, Python warnings
    routed through it."""
    root = logging.getLogger()
    if not configured():
        handler = StderrHandler()
        handler.addFilter(RankFilter())
        handler.setFormatter(LineFormatter())
        root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    get_logger().setLevel(level)
    warnings.showwarning = show_warning
