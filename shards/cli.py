"""``python -m shards {build,plan,merge,verify,synth,copy,bench}``: thin entry points over
BuildConfig, the builder's three steps, verify, copy and synth.

User mistakes (bad arguments, missing root, malformed CSV, a full disk) end as one ``error:``
line naming the file and exit status 2; ``--strict`` builds with rejects exit with 1, and so
does ``verify`` when any shard differs from its manifest (one line per bad shard).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from shards.base.config import field_docs
from shards.base.errors import CliParser, run_cli
from shards.builder.config import BuildConfig, load_build_config
from shards.format.manifest import REJECTS, Manifest
from shards.importers import get_importer, importer_names

# CLI flag -> BuildConfig field; unset flags stay None so the TOML file can supply them.
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--root", "root", dict(type=Path, help="raw dataset folder")),
    ("--out", "out", dict(type=str, help="build folder to write: a local path or s3://bucket/prefix")),
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
    ("--executor", "executor", dict(choices=["local", "ray"], help="who builds the shards (default local)")),
    ("--ray-address", "ray_address", dict(help="executor ray: cluster to join (auto, ray://host:10001)")),
    (
        "--decode-timeout",
        "decode_timeout",
        dict(type=float, help="reject a file still decoding after this many s (default 600)"),
    ),
    (
        "--max-seconds",
        "max_seconds",
        dict(type=float, help="reject inputs longer than this, from their header (default 14400; 0 = none)"),
    ),
    ("--part", "part", dict(help="array jobs: build slice I of N of the plan (I/N, 0-based)")),
]


def importer_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """One flag per option an importer declares (``top_n`` -> ``--top-n``), generated from the
    importers' own options dataclasses; a name several importers declare is one flag."""
    owners: dict[str, list[str]] = {}
    kinds: dict[str, Any] = {}
    docs: dict[str, str] = {}
    for name in importer_names():
        cls = get_importer(name).options
        hints = typing.get_type_hints(cls)
        docs |= field_docs(cls)
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(name)
            kinds[f.name] = hints[f.name]
    out = []
    for dest, who in owners.items():
        hint, args = kinds[dest], typing.get_args(kinds[dest])
        text = f"{'/'.join(who)}: {docs.get(dest, dest)}"
        if hint is bool:
            kw: dict[str, Any] = dict(action="store_const", const=True, help=text)
        elif typing.get_origin(hint) is typing.Literal:
            kw = dict(choices=list(args), help=text)
        else:
            base = next((a for a in (args or (hint,)) if a is not type(None)), str)
            kw = dict(type=base if base in (int, float) else str, help=text)
        out.append((f"--{dest.replace('_', '-')}", dest, kw))
    return out


def _add_build_flags(b: argparse.ArgumentParser) -> None:
    """The flags of ``build`` and ``plan``: a source, a TOML file, every BuildConfig field."""
    b.add_argument(
        "source", nargs="?", choices=importer_names(), help="importer (or [shards] source in --config)"
    )
    b.add_argument("--config", type=Path, help="TOML file with a [shards] table (CLI flags override it)")
    flags = [*_FLAGS, *importer_flags()]
    for flag, dest, kw in flags:
        b.add_argument(flag, dest=dest, default=None, **kw)
    for flag, dest, text in [
        ("--force", "force", "rebuild instead of resuming"),
        ("--strict", "strict", "exit 1 when any input is rejected"),
    ]:
        b.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
    # the BuildConfig keys these flags set, so _build need not generate the importer flags again
    b.set_defaults(config_keys=(*(dest for _, dest, _ in flags), "force", "strict"))
    b.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> CliParser:
    p = CliParser(prog="python -m shards", description="Build musicstream WebDataset shards.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_build_flags(sub.add_parser("build", help="pack a raw dataset into shards (plan, build, merge)"))
    _add_build_flags(sub.add_parser("plan", help="only write the build plan (before array --part jobs)"))
    m = sub.add_parser("merge", help="write manifest.json once every --part job has run")
    m.add_argument("out", help="the build folder (local path or s3://bucket/prefix)")
    m.add_argument("--strict", action="store_true", help="exit 1 when any input is rejected")
    v = sub.add_parser("verify", help="check every shard and index against the manifest's sizes and sha256")
    v.add_argument("build", help="build folder holding manifest.json, or its s3:// / gs:// prefix")
    v.add_argument("--workers", type=int, default=4, help="shards checked at once (default 4)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("synth", help="write a synthetic folder dataset (see shards/bench/synth.py)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--tracks", type=int, default=48)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--formats", default="mp3,flac,ogg,wav", help="comma-separated audio formats")
    c = sub.add_parser("copy", help="copy a build between a local folder and s3://bucket/prefix, either way")
    c.add_argument("src", help="build folder or s3://bucket/prefix (with manifest.json)")
    c.add_argument("dst", help="destination folder or s3://bucket/prefix (manifest written last)")
    c.add_argument("--workers", type=int, default=4, help="shards in flight at once")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    k = sub.add_parser("bench", help="shard-build throughput from MP3 sources")
    k.add_argument("--tracks", type=int, default=16)
    k.add_argument("--seconds", type=float, default=30.0)
    k.add_argument("--workers", type=int, default=0)
    k.add_argument("--sample-rate", type=int, default=44100, help="sample rate of the MP3 sources")
    k.add_argument(
        "--dir", type=Path, default=None, help="work folder, keeps the MP3s for re-runs (default: temporary)"
    )
    return p


def _config(a: argparse.Namespace) -> BuildConfig:
    cli = {dest: getattr(a, dest) for dest in a.config_keys if getattr(a, dest) is not None}
    if a.source:
        cli["source"] = a.source
    return load_build_config(a.config, cli)


def _summary(out: object, manifest: Manifest) -> str:
    t = manifest.totals
    per = ", ".join(
        f"{s} {i.tracks}" + (f" in {i.num_samples} segments" if i.num_samples != i.tracks else "")
        for s, i in manifest.splits.items()
    )
    return f"{out}: {t['written']} written ({per}), {t['rejected']} rejected of {t['input']} inputs"


def _finish(out: object, manifest: Manifest, strict: bool) -> int:
    print(_summary(out, manifest))
    rejected = manifest.totals["rejected"]
    if strict and rejected:
        print(f"error: {rejected} input(s) rejected (--strict); see {out}/{REJECTS}", file=sys.stderr)
        return 1
    return 0


def _build(a: argparse.Namespace) -> int:
    from shards.builder.driver import build, build_part

    cfg = _config(a)
    if cfg.part is None:
        return _finish(cfg.out, build(cfg, progress=not a.quiet), cfg.strict)
    r = build_part(cfg, progress=not a.quiet)
    (i, n), left = r.part, r.missing
    print(
        f"{cfg.out}: part {i}/{n}: {r.built} of its {r.shards} shards built now, the rest already were; "
        + (
            f"{left} of {r.planned} planned shards still to build"
            if left
            else f"all shards built: run `python -m shards merge {cfg.out}`"
        )
    )
    return 0


def _plan(a: argparse.Namespace) -> int:
    from shards.builder.driver import plan_build

    cfg = _config(a)
    p = plan_build(cfg, progress=not a.quiet)
    per = ", ".join(f"{s} {sum(x.split == s for x in p.shards)}" for s in p.splits)
    print(
        f"{cfg.out}: {len(p.shards)} shards planned ({per}); build them with --part I/N, then `python -m shards merge {cfg.out}`"
    )
    return 0


def _merge(a: argparse.Namespace) -> int:
    from shards.builder.driver import merge_build

    return _finish(a.out, merge_build(a.out), a.strict)


def _verify(a: argparse.Namespace) -> int:
    from shards.base.atomic import human_bytes
    from shards.format.manifest import MANIFEST
    from shards.format.verify import open_build, verify_build

    if a.workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {a.workers}")
    m, files = open_build(a.build)  # a local folder or an s3:// / gs:// prefix
    found = verify_build(m, files, workers=a.workers, show_progress=not a.quiet)
    for bad in found.bad:
        print(bad)
    if found.bad:
        print(
            f"error: {a.build}: {len(found.bad)} of {found.shards} shards differ from {MANIFEST}; delete "
            "each bad .tar and run the same build command again (it rebuilds from there), or copy them again",
            file=sys.stderr,
        )
        return 1
    print(f"{a.build}: all {found.shards} shards ({human_bytes(found.bytes)}) match {MANIFEST}")
    return 0


def _synth(a: argparse.Namespace) -> int:
    from shards.bench.synth import make_synth

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


def _copy(a: argparse.Namespace) -> int:
    from shards.format.copy import CopyReport, copy_build

    if a.workers <= 0:
        raise ValueError(f"--workers: must be positive, got {a.workers}")
    r = CopyReport()
    done = "no manifest: the copy stopped (run the same command again to resume)"
    try:
        copy_build(a.src, a.dst, workers=a.workers, show=False if a.quiet else None, report=r)
        done = "manifest written"
    finally:  # a failed copy reports what it did too (then the error line)
        print(
            f"{a.dst}: {r.copied} shard(s) copied ({r.bytes / 1e6:.1f} MB), {r.skipped} already there; {done}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    a = _parser().parse_args(argv)
    commands = {
        "build": _build,
        "plan": _plan,
        "merge": _merge,
        "verify": _verify,
        "synth": _synth,
        "copy": _copy,
    }
    if a.cmd in commands:
        return commands[a.cmd](a)
    from shards.bench.build_speed import main as bench_main

    return bench_main(a)
