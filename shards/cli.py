"""``python -m shards {build,synth,bench}``: thin entry points over BuildConfig, build and synth.

User mistakes (bad arguments, missing root, malformed CSV) end as one ``error:`` line
naming the file and exit status 2; ``--strict`` builds with rejects exit with 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shards.config import SOURCES, BuildConfig, load_build_config

# CLI flag -> BuildConfig field; unset flags stay None so the TOML file can supply them.
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--root", "root", dict(type=Path, help="raw dataset folder")),
    ("--out", "out", dict(type=Path, help="build folder to write")),
    ("--task", "task", dict(choices=["single", "multi", "hier"], help="label task (default: the source's)")),
    ("--sample-rate", "sample_rate", dict(type=int, help="stored sample rate (default 22050)")),
    ("--codec", "codec", dict(choices=["pcm16", "flac", "ogg"], help="stored audio codec (default pcm16)")),
    ("--shard-size", "shard_size_mb", dict(type=float, help="max MiB per shard (default 256)")),
    ("--workers", "workers", dict(type=int, help="decoding processes (default 0 = all cores)")),
    ("--seed", "seed", dict(type=int, help="shuffle/split seed (default 0)")),
    ("--min-seconds", "min_seconds", dict(type=float, help="reject shorter tracks (default 1.0)")),
    (
        "--segment-seconds",
        "segment_seconds",
        dict(type=float, help="store longer tracks as segments of this length (default 30)"),
    ),
    ("--csv", "csv", dict(help="label file relative to --root")),
    ("--subset", "subset", dict(choices=["small", "medium", "large"], help="fma subset (default small)")),
    ("--top-n", "top_n", dict(type=int, help="mtat: number of tags (default 50)")),
    ("--split-files", "split_files", dict(help="mtat: folder with a published split (docs/shard-format.md)")),
    (
        "--media",
        "media",
        dict(
            choices=["auto", "audio", "image"],
            help="ccmusic: store the image columns or the audio (default auto)",
        ),
    ),
    (
        "--hf-config",
        "hf_config",
        dict(help="ccmusic: dataset config folder when ROOT holds several (eval, default)"),
    ),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description="Build musicstream WebDataset shards.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="pack a raw dataset into shards")
    b.add_argument("source", nargs="?", choices=SOURCES, help="importer (or [shards] source in --config)")
    b.add_argument("--config", type=Path, help="TOML file with a [shards] table (CLI flags override it)")
    for flag, dest, kw in _FLAGS:
        b.add_argument(flag, dest=dest, default=None, **kw)
    for flag, dest, text in [
        ("--force", "force", "rebuild instead of resuming"),
        ("--strict", "strict", "exit 1 when any input is rejected"),
        ("--clean", "clean", "mtat: reject clips without a top-N tag"),
        ("--verify", "verify", "fma: check each mp3 against fma_SUBSET/checksums"),
    ]:
        b.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("synth", help="write a synthetic folder dataset (see shards/synth.py)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--tracks", type=int, default=48)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--formats", default="mp3,flac,ogg,wav", help="comma-separated audio formats")
    k = sub.add_parser("bench", help="shard-build throughput from MP3 sources")
    k.add_argument("--tracks", type=int, default=16)
    k.add_argument("--seconds", type=float, default=30.0)
    k.add_argument("--workers", type=int, default=0)
    k.add_argument("--sample-rate", type=int, default=44100, help="sample rate of the MP3 sources")
    k.add_argument(
        "--dir", type=Path, default=None, help="work folder, keeps the MP3s for re-runs (default: temporary)"
    )
    return p


def _build(a: argparse.Namespace) -> int:
    from shards.builder import build

    cli = {dest: getattr(a, dest) for _, dest, _ in _FLAGS if getattr(a, dest) is not None}
    cli |= {k: True for k in ("force", "strict", "clean", "verify") if getattr(a, k)}
    if a.source:
        cli["source"] = a.source
    cfg: BuildConfig = load_build_config(a.config, cli)
    m = build(cfg, progress=not a.quiet)
    t = m.totals
    per = ", ".join(
        f"{s} {i.tracks}" + (f" in {i.num_samples} segments" if i.num_samples != i.tracks else "")
        for s, i in m.splits.items()
    )
    print(f"{cfg.out}: {t['written']} written ({per}), {t['rejected']} rejected of {t['input']} inputs")
    if cfg.strict and t["rejected"]:
        print(
            f"error: {t['rejected']} input(s) rejected (--strict); see {cfg.out / 'rejects.jsonl'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _synth(a: argparse.Namespace) -> int:
    from shards.synth import make_synth

    csv = make_synth(
        a.out,
        tracks=a.tracks,
        seconds=a.seconds,
        seed=a.seed,
        formats=[f.strip() for f in a.formats.split(",") if f.strip()],
        progress=True,
    )
    print(f"{csv}: {a.tracks} tracks of {a.seconds:g} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "build":
            return _build(a)
        if a.cmd == "synth":
            return _synth(a)
        from shards.bench import main as bench_main

        return bench_main(a)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
