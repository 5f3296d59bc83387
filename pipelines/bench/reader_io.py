"""``python -m pipelines.bench.reader_io SHARDS``: the DALI webdataset reader alone, shard files
memory-mapped (``loader.mmap=true``, DALI's default) vs plain reads (``loader.mmap=false``).

Why: plain reads turn a shard truncated under a running job into one error line instead of a
SIGBUS, at the price of a copy of every byte read; this measures that price where it is
largest (nothing but the reader in the graph). Rounds alternate the two modes in one process,
so a shared machine's load hits both alike; prints samples/s and MB/s per round as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from nvidia.dali import fn, pipeline_def, types

from shards.base.errors import CliParser, run_cli
from shards.format import member_layout, read_manifest


def reader_rate(
    tars: list[Path], idxs: list[Path], fixed: list[str], *, mmap: bool, threads: int, seconds: float
) -> float:
    """Samples per second through a reader-only pipeline (each sample's bytes read once);
    ``fixed``: the ids members the loader reads besides the audio (``shards.format.members``)."""

    @pipeline_def(batch_size=16, num_threads=threads, device_id=None, prefetch_queue_depth=2)  # type: ignore[call-overload]
    def reader():  # type: ignore[no-untyped-def]
        pcm, *ids = fn.readers.webdataset(
            paths=[str(t) for t in tars], index_paths=[str(i) for i in idxs], ext=["pcm", *fixed],
            dtypes=[types.INT16, *[types.INT64] * len(fixed)], dont_use_mmap=not mmap,
            random_shuffle=True, initial_fill=32, name="r",
        )  # fmt: skip
        # touches every byte, as decoding does (a mapped page is read only when touched)
        return fn.reductions.max(pcm), *ids

    pipe = reader()
    pipe.build()
    for _ in range(3):
        pipe.run()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pipe.run()
        n += 16
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m pipelines.bench.reader_io", description=__doc__.splitlines()[0])
    p.add_argument("shards", type=Path, help="a pcm16 build folder")
    p.add_argument("--split", default="train")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="timed per mode and round")
    a = p.parse_args(argv)
    manifest = read_manifest(a.shards)
    if manifest.kind != "audio" or manifest.codec != "pcm16":
        raise ValueError(
            f"{a.shards}: needs a pcm16 audio build (this one is {manifest.kind}/{manifest.codec})"
        )
    tars, idxs = manifest.paths(a.split)
    fixed = list(member_layout(manifest).members)
    info = manifest.split(a.split)
    per_sample = sum(s.bytes for s in info.shards) / max(1, info.num_samples)
    rows = []
    for r in range(a.rounds):
        for mmap in (True, False):
            rate = reader_rate(tars, idxs, fixed, mmap=mmap, threads=a.threads, seconds=a.seconds)
            rows.append(
                {
                    "round": r,
                    "mmap": mmap,
                    "samples_per_s": round(rate),
                    "mb_per_s": round(rate * per_sample / 1e6),
                }
            )
    print(json.dumps({"shards": str(a.shards), "threads": a.threads, "rounds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
