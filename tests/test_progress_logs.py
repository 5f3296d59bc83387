"""How progress and messages read where jobs run: a live bar on a terminal, short plain lines in a
log file, each warning once per job (``shards.base.progress``, ``shards.base.logs``)."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import pytest

from shards.base import logs
from shards.base.errors import CliParser
from shards.base.progress import ENV_INTERVAL, ENV_MODE, MAX_LINE, LineProgress, progress, resolve_mode

ROOT = Path(__file__).resolve().parents[1]
LONGEST = 400  # "no line over a few hundred characters"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_come_once_per_interval_with_rate_eta_and_postfix() -> None:
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=100, desc="epoch 1/3", unit="batch", stream=out, interval=30.0, clock=clock)
    for _ in range(100):  # one batch per second
        clock.t += 1.0
        bar.update(1)
        bar.set_postfix(loss=f"{0.5:.4f}", lr=f"{1e-3:.2e}")
    bar.close()
    bar.close()  # a second close writes nothing
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 1/3: 30/100 batch (30%), 1 batch/s, elapsed 30.0s, eta 1:10, loss=0.5000, lr=1.00e-03",
        "epoch 1/3: 60/100 batch (60%), 1 batch/s, elapsed 1:00, eta 40.0s, loss=0.5000, lr=1.00e-03",
        "epoch 1/3: 90/100 batch (90%), 1 batch/s, elapsed 1:30, eta 10.0s, loss=0.5000, lr=1.00e-03",
        "epoch 1/3: 100/100 batch (100%), 1 batch/s, done in 1:40, loss=0.5000, lr=1.00e-03",
    ]


def test_line_rate_follows_the_recent_speed_and_resumes_count_from_initial() -> None:
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=50, desc="e", unit="it", initial=20, stream=out, interval=10.0, clock=clock)
    for step in range(30):
        clock.t += 0.5 if step < 20 else 5.0  # 2 it/s, then 0.2 it/s
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "e: 40/50 it (80%), 2 it/s, elapsed 10.0s, eta 5.0s"
    assert lines[1] == "e: 42/50 it (84%), 5 s/it, elapsed 20.0s, eta 40.0s"
    assert lines[-1] == "e: 50/50 it (100%), 2 s/it, done in 1:00"  # 30 items in 60 s


def test_a_line_never_runs_past_the_limit_and_silent_mode_counts() -> None:
    out = io.StringIO()
    bar = LineProgress(iter(range(3)), desc="x" * 50, stream=out, interval=0.0)
    bar.set_postfix(note="a very long\nmulti-line value " * 40)
    assert list(bar) == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(len(line) == MAX_LINE and line.endswith("...") for line in lines)
    assert lines[-1].startswith("x" * 50 + ": 3 it, ")  # no total: a count, no percentage
    silent = LineProgress(total=4, stream=None)
    silent.update(4)
    silent.close()
    assert silent.n == 4 and silent.lines == 0


def test_mode_follows_the_environment_and_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv(ENV_MODE, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert resolve_mode(Tty()) == "bar" and resolve_mode(io.StringIO()) == "lines"
    monkeypatch.setenv("TERM", "dumb")
    assert resolve_mode(Tty()) == "lines"
    monkeypatch.setenv(ENV_MODE, "none")
    assert resolve_mode(Tty()) == "none"
    monkeypatch.setenv(ENV_MODE, "sometimes")
    with pytest.raises(ValueError, match="MUSICSTREAM_PROGRESS='sometimes': choose from auto, bar"):
        resolve_mode()


def test_every_cli_parser_takes_progress_and_sets_it_for_child_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_MODE, raising=False)
    top = CliParser(prog="tool")
    sub = top.add_subparsers(dest="cmd").add_parser("run")  # subcommands are CliParsers too
    sub.add_argument("--n", type=int)
    top.parse_args(["--progress", "lines", "run", "--n", "1"])  # before the subcommand ...
    assert os.environ[ENV_MODE] == "lines"
    top.parse_args(["run", "--progress=none"])  # ... or after it
    assert os.environ[ENV_MODE] == "none"
    top.parse_args(["run"])  # not given: left as it was
    assert os.environ[ENV_MODE] == "none"


def test_progress_is_silent_off_rank_zero(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(ENV_MODE, "lines")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert list(progress(range(3), desc="quiet")) == [0, 1, 2]
    monkeypatch.setenv("RANK", "0")
    assert list(progress(range(3), desc="loud")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "quiet" not in err and err.startswith("loud: 3/3 it (100%), ")


def _records(rank: int, world: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    handler = logs.StderrHandler()
    handler.addFilter(logs.RankFilter())
    handler.setFormatter(logs.LineFormatter())
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    log = logging.getLogger("musicstream.test")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.warning("same on every rank")
        log.info("epoch 1/2, step 4:\nloss")
        logs.log_per_rank(log, logging.WARNING, f"data wait {rank}")
        log.info("i" * 1000)
        log.error("x" * 1000 + " fix: y" + "z" * 400)
    finally:
        log.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_rank_zero_speaks_for_the_job_and_per_rank_messages_carry_the_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zero = _records(0, 2, monkeypatch)
    assert zero[:3] == [
        "warning: same on every rank",
        "epoch 1/2, step 4: loss",
        "[rank 0] warning: data wait 0",
    ]
    assert len(zero[3]) == logs.MAX_LINE and zero[3].endswith("iii...")  # an info line: cut
    assert len(zero[4]) == logs.MAX_WARNING and zero[4].startswith("error: xxx") and zero[4].endswith("zzz")
    assert " ... " in zero[4]  # a warning or error keeps its start and its end
    assert _records(1, 2, monkeypatch) == ["[rank 1] warning: data wait 1"]
    monkeypatch.setenv(logs.ENV_RANKS, "all")
    assert _records(1, 2, monkeypatch)[0] == "[rank 1] warning: same on every rank"
    monkeypatch.delenv(logs.ENV_RANKS)
    assert _records(0, 1, monkeypatch)[2] == "warning: data wait 0"  # one process: no prefix


def test_python_warnings_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(logging.getLogger("musicstream.warnings"), "warning", seen.append)
    logs.show_warning(UserWarning("ours"), UserWarning, logs.__file__, 12)
    logs.show_warning(FutureWarning("theirs"), FutureWarning, "/site-packages/lib/mod.py", 7)
    assert seen == ["ours", "theirs (FutureWarning, mod.py:7)"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", logs.show_warning)
        warnings.warn("routed", stacklevel=1)
    assert seen[-1] == "routed"


# ------------------------------------------------------------------ the CLIs, to a file and a pty
SYNTH = ["-m", "shards", "synth", "--tracks", "6", "--seconds", "0.5", "--formats", "wav"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_MODE, "NO_COLOR")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _long_lines(text: str) -> list[str]:
    return [line[:80] for line in text.splitlines() if len(line) > LONGEST]


def test_cli_output_to_a_file_is_short_plain_lines(tmp_path: Path) -> None:
    """``python -m shards synth`` with stdout and stderr in one file (as SLURM writes them): a line
    per interval (0 s here: one per track), the last one saying it is done, no ``\r``. (The
    trainer's own lines, loss and lr in them, under torchrun: tests/test_job_output.py.)"""
    log = tmp_path / "synth.log"
    with open(log, "w") as f:
        cmd = [sys.executable, *SYNTH, "--out", str(tmp_path / "raw")]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(**{ENV_INTERVAL: "0"}), stdout=f, stderr=f, timeout=120)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and not _long_lines(text)
    lines = [line for line in text.splitlines() if line.startswith("synth: ")]
    assert [line.split(",")[0] for line in lines] == [
        f"synth: {i}/6 track ({100 * i / 6:.0f}%)" for i in range(1, 7)
    ]
    assert "eta" in lines[0] and "done in" in lines[-1] and "track/s" in lines[-1]


def _pty_run(
    cmd: list[str], env: dict[str, str], size: tuple[int, int] = (24, 80), timeout: float = 120.0
) -> str:
    """The command's output as a terminal of ``size`` (rows, columns) shows it (stdout and stderr
    on one pty; (0, 0): a pty that reports no size, as ``script`` or some CI runners give)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, end = [], time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_the_live_bar_and_a_dumb_one_lines(tmp_path: Path) -> None:
    cmd = [sys.executable, *SYNTH]
    bar = _pty_run([*cmd, "--out", str(tmp_path / "a")], _env(TERM="xterm"))
    assert "\r" in bar and re.search(r"\rsynth: 100%\|█+\| 6/6 \[", bar)
    assert max(len(part) for part in bar.split("\r") if part.startswith("synth")) <= 80  # fits the terminal
    plain = _pty_run([*cmd, "--out", str(tmp_path / "b")], _env(TERM="xterm", NO_COLOR="1"), size=(0, 0))
    assert re.search(r"\rsynth: 100%\|#+\| 6/6 \[", plain) and "█" not in plain
    dumb = _pty_run([*cmd, "--out", str(tmp_path / "c")], _env(TERM="dumb"))
    assert "synth: 6/6 track (100%), " in dumb and "%|" not in dumb
    forced = _pty_run([*cmd, "--out", str(tmp_path / "d"), "--progress", "none"], _env(TERM="xterm"))
    assert forced.strip().endswith("labels.csv: 6 tracks of 0.5 s") and "synth" not in forced
