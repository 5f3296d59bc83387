"""``python -m pipelines.features FILE... --config C --out DIR``: the configured channels of audio files.

What the model sees, to look at and to compare with librosa's features: each file is decoded
and resampled to ``features.sample_rate`` as the shard build does (``shards.builder.audio``),
then its channels are computed by the loader's own code over the whole file (frame t centred
on sample ``t * hop``, librosa's ``center=True``; ``pipelines.whole_file``). Written per file:
``DIR/NAME.npz`` (one float32 array per channel, rows x frames, at the channel's own height,
before resizing and normalisation) and ``DIR/NAME.png`` (``pipelines.feature_plot``). A file that
cannot be read is one ``warning:`` line; the others are still written (exit status 1 then).
An entry module: the loader never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import FeatureConfig
from pipelines.feature_plot import plot_channels
from pipelines.whole_file import WholeFile
from shards.base.atomic import atomic_open
from shards.base.config import load_sections
from shards.base.distributed import resolve_device
from shards.base.errors import CliParser, first_line, run_cli, say_warning
from shards.base.progress import progress
from shards.builder.audio import NoAudio, decode, to_mono
from shards.importers import reasons


def read_signal(path: Path, sample_rate: int) -> np.ndarray | str:
    """Mono float32 at ``sample_rate`` as a shard build stores it, or why the file cannot be used
    (the build's reject reasons: ``shards.importers.reasons``)."""
    fault = reasons.file_fault(path)
    if fault:
        return fault
    try:
        x, sr = decode(path)
    except NoAudio:
        return reasons.not_audio(path)
    except Exception as e:  # libsndfile raises several types for a stream damaged mid-way
        return f"decode failed: {first_line(e)}"
    if x.shape[0] == 0 or sr <= 0:
        return reasons.no_audio_frames(reasons.size_of(path))
    y = to_mono(x, sr, sample_rate)
    if y.shape[0] == 0:
        return f"no samples left at {sample_rate} Hz"
    if not np.isfinite(y).all():
        return "decode failed: non-finite samples"
    return y


def output_names(files: list[Path]) -> list[str]:
    """Each file's NAME: its stem, numbered when two inputs share one."""
    stems = [f.stem for f in files]
    return [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]


def write_features(channels: dict[str, np.ndarray], features: FeatureConfig, out: Path, name: str) -> None:
    with atomic_open(out / f"{name}.npz", "wb", what=f"features {name}.npz") as f:
        arrays: dict[str, Any] = {k: v.astype(np.float32) for k, v in channels.items()}
        np.savez(f, **arrays)
    plot_channels(channels, features, out / f"{name}.png", title=name)


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.features", description=__doc__.splitlines()[0])
    ap.add_argument(
        "files", nargs="+", type=Path, help="audio files (anything soundfile reads, MP3 included)"
    )
    ap.add_argument("--config", type=Path, help="experiment TOML (its [features] section is used)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (NAME.npz, NAME.png per file)")
    ap.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda[:N]")
    args, overrides = ap.parse_known_args(argv)
    sections = load_sections({"features": FeatureConfig}, args.config, overrides, allow_other=True)
    features = sections["features"]
    compute = WholeFile(features, resolve_device(args.device))
    failed = 0
    try:
        for path, name in progress(
            list(zip(args.files, output_names(args.files))), desc="features", unit="file"
        ):
            signal = read_signal(path, features.sample_rate)
            if isinstance(signal, str):
                say_warning(f"{path}: {signal}")  # one line; the other files are still written
                failed += 1
                continue
            write_features(compute(signal), features, args.out, name)
    finally:
        compute.close()
    done = len(args.files) - failed
    print(
        f"{args.out}: {done} file(s), channels {', '.join(features.channels)}"
        + (f"; {failed} unreadable" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
