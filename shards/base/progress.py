"""The one progress display of every stage (builds, training, eval, predict, stats, benchmarks).

Every long loop asks here for its display, so how progress is shown is decided in one place:

- ``bar``: a live tqdm bar (a terminal);
- ``lines``: one plain line per interval (``MUSICSTREAM_PROGRESS_INTERVAL`` seconds, 30 by
  default) and one when the loop ends, with count, rate, ETA and the postfix values (loss, lr),
  each line short: what a log file, SLURM's output file or a CI log can show (``tail``, ``grep``);
- ``none``: nothing;
- ``auto`` (the default): ``bar`` when stderr is a terminal (not ``TERM=dumb``), else ``lines``.

The mode comes from ``MUSICSTREAM_PROGRESS`` (library use; every CLI's ``--progress`` sets it,
so processes a CLI starts follow it too). ``NO_COLOR`` draws the bar in plain ASCII. Only rank 0
(``is_main_process``) shows progress: a job shows it once, not once per rank.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

from shards.base.distributed import is_main_process

MODES = ("auto", "bar", "lines", "none")
ENV_MODE = "MUSICSTREAM_PROGRESS"
ENV_INTERVAL = "MUSICSTREAM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
MAX_LINE = 200
"""Longest progress line written in ``lines`` mode (longer postfixes are cut)."""


class Progress(Protocol):
    """What every call site uses of a display (tqdm's names)."""

    def __iter__(self) -> Iterator[Any]: ...
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...


def set_mode(mode: str) -> None:
    """Choose the display for this process and the processes it starts (``--progress``)."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: choose from {', '.join(MODES)}")
    os.environ[ENV_MODE] = mode


def resolve_mode(stream: IO[str] | None = None) -> str:
    """``bar``, ``lines`` or ``none``: ``MUSICSTREAM_PROGRESS``, with ``auto`` decided by ``stream``
    (stderr): a terminal gets the bar unless ``TERM=dumb``."""
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={mode!r}: choose from {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return "bar" if tty and os.environ.get("TERM", "") != "dumb" else "lines"


def interval_s() -> float:
    """Seconds between two lines in ``lines`` mode (``MUSICSTREAM_PROGRESS_INTERVAL``, default 30)."""
    raw = os.environ.get(ENV_INTERVAL)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_INTERVAL}={raw!r}: expected seconds (a number >= 0)") from None
    if value < 0:
        raise ValueError(f"{ENV_INTERVAL}={raw!r}: expected seconds (a number >= 0)")
    return value


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = True,
    initial: int = 0,
    leave: bool = True,
) -> Progress:
    """A progress display over ``iterable`` (or updated by hand: ``.update(n)``,
    ``.set_postfix(...)``, ``.close()``), as the mode says. ``enabled=False``: silent (a CLI's
    ``--quiet``); ``None`` is the same as True. ``leave=False``: a terminal bar is erased at
    the end; ``lines`` still writes its closing line (the log's record of the loop)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    mode = resolve_mode() if enabled is not False and is_main_process() else "none"
    if mode == "bar":
        from tqdm import tqdm

        plain = bool(os.environ.get("NO_COLOR"))
        # a terminal that reports no size (a bare pty: `script`, some CI runners) would get no bar
        size: dict[str, Any] = (
            {"dynamic_ncols": True} if _columns(sys.stderr) else {"ncols": 100, "nrows": 20}
        )
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,  # type: ignore[no-any-return]
                    ascii=plain or None, **size)  # fmt: skip
    stream = sys.stderr if mode == "lines" else None
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)


class LineProgress:
    """Progress as plain lines: at most one per interval (written on the update that crosses it)
    and one at the end. ``stream=None`` counts silently (the ``none`` mode)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        stream: IO[str] | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._start_n = self._last_n = initial
        self.stream = stream
        self.interval = interval_s() if interval is None and stream is not None else (interval or 0.0)
        self.clock = clock
        self._t0 = self._last_t = clock()
        self.postfix = ""
        self.lines = 0
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "progress() without an iterable is updated by hand"
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc and exc[0] is not None:  # a failed loop writes no "done" line
            self.closed = True
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        finished = self.total is not None and self.n >= self.total  # close() writes that line
        if self.stream is not None and not finished and self.clock() - self._last_t >= self.interval:
            self._emit(final=False)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown after the counts (``loss=0.4312, lr=1.00e-03``)."""
        values = {**dict(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_short(v)}" for k, v in values.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        """Write the closing line (unless nothing happened and nothing was written)."""
        if self.closed:
            return
        self.closed = True
        moved = self.n != (self._last_n if self.lines else self._start_n)
        if self.stream is not None and moved:  # not when the last line already shows this count
            self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        assert self.stream is not None
        now = self.clock()
        self.stream.write(self.format_line(now, final=final) + "\n")
        self.stream.flush()
        self.lines += 1
        self._last_t, self._last_n = now, self.n

    def format_line(self, now: float, *, final: bool) -> str:
        """``desc: n/total unit (pct), rate, elapsed, eta, postfix``, at most ``MAX_LINE`` long.

        The rate is the recent one (since the previous line: what the ETA should follow);
        the closing line gives the whole loop's."""
        elapsed = now - self._t0
        done = self.n - self._start_n
        if final or now <= self._last_t:
            rate = done / elapsed if elapsed > 0 else 0.0
        else:
            rate = (self.n - self._last_n) / (now - self._last_t)
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        parts = [count, _rate(rate, self.unit)]
        if final:
            parts.append(f"done in {_clock(elapsed)}")
        else:
            parts.append(f"elapsed {_clock(elapsed)}")
            if self.total and rate > 0:
                parts.append(f"eta {_clock(max(0, self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        line = (f"{self.desc}: " if self.desc else "") + ", ".join(parts)
        return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _columns(stream: IO[str]) -> int:
    """The terminal's width (0 when it reports none)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0


def _short(value: Any) -> str:
    """A postfix value on one line."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(text.split())


def _rate(per_s: float, unit: str) -> str:
    if per_s <= 0:
        return f"? {unit}/s"
    if per_s < 1:
        return f"{1 / per_s:.3g} s/{unit}"
    return f"{per_s:.0f} {unit}/s" if per_s >= 100 else f"{per_s:.3g} {unit}/s"


def _clock(seconds: float) -> str:
    """``4.2s`` under a minute, ``m:ss``, ``h:mm:ss`` from an hour on."""
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _open_bars() -> list[Any]:
    """Live tqdm bars of this process (none unless the ``bar`` mode imported tqdm)."""
    tqdm_module = sys.modules.get("tqdm")
    return list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ()) or ())


def close_all() -> None:
    """Close every live bar, so a final ``error:`` line starts on a line of its own (a bar that an
    exception left open would otherwise have the error appended to it). Plain lines end in a
    newline already, and a failed loop must not claim it is done: they are left alone."""
    for bar in _open_bars():
        bar.close()


def write_line(text: str) -> None:
    """One line on stderr that does not tear a live bar (the bar is redrawn below it)."""
    if _open_bars():
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
        return
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
