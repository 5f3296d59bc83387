"""``python -m eval.predict``: a trained checkpoint on audio files -> per-track predictions.

No second feature implementation: the files are transcoded by the shards package (soundfile
decode, mono, soxr resample to the checkpoint's sample rate, pcm16: the builder every
dataset goes through) into a temporary shard folder, which the eval loader and
``eval.runner`` score exactly as ``python -m eval`` scores a split (same DALI graph, same
chunking, same chunk-to-track aggregation). A file the builder rejects is listed with its
reason. From Python::

    from eval.predict import Predictor
    preds = Predictor.from_checkpoint("runs/x/checkpoints/best.pt")(["song.mp3", "folder/"])
    preds.tracks[0]["prediction"], preds.rejected, preds.write("out/")
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from eval.config import Aggregate
from eval.prediction_report import PredictionReport, describe, load_thresholds
from eval.thresholds import ThresholdKind, Thresholds
from shards.base.distributed import resolve_device
from shards.base.errors import CliParser, run_cli
from shards.base.progress import progress
from shards.base.tasks import TaskSpec
from shards.format import META_EXT, REJECTS, Manifest
from shards.importers.records import Dataset, Record, read_table, require_columns
from train.checkpoint import TrainedModel, load_trained_model

# extensions soundfile (libsndfile) reads, plus the common aliases; other files in a folder are skipped, and listed
AUDIO_EXTS = frozenset({f".{k.lower()}" for k in sf.available_formats()} | {".mp3", ".oga", ".opus", ".aif"})
SPLIT = "test"


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files as given, folders' audio files (recursively, sorted), CSVs' ``path`` column
    (relative to the CSV's folder); what a folder holds besides audio is listed as skipped."""
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if f.suffix.lower() in AUDIO_EXTS:
                    files.append(f)
                else:
                    skipped.append(
                        {
                            "path": str(f),
                            "reason": f"skipped: not an audio file ({f.suffix or 'no extension'})",
                        }
                    )
        elif p.suffix.lower() == ".csv":
            df = read_table(p, dtype=str, keep_default_na=False)
            require_columns(df, ["path"], p)
            files += [(p.parent / v) if not Path(v).is_absolute() else Path(v) for v in df["path"]]
        else:
            files.append(p)  # a missing file is rejected by the builder ("missing file")
    return files, skipped


def placeholder_labels(task: TaskSpec) -> Any:
    """Labels the shard format needs but prediction never reads: a valid value of the task."""
    if task.kind == "single":
        return task.classes[0]
    if task.kind == "multi":
        return []
    path = [0]
    for lv in task.levels[1:]:
        assert lv.parent is not None
        path.append(lv.parent.index(path[-1]))
    return [lv.classes[i] for lv, i in zip(task.levels, path)]


class Predictor:
    """A checkpoint as a user sees it: ``Predictor.from_checkpoint(path)(files) -> PredictionReport``."""

    def __init__(
        self,
        model: TrainedModel,
        *,
        thresholds: Thresholds | None = None,
        threshold_source: str = "",
        top_k: int = 5,
        aggregate: Aggregate = "mean",
        workers: int = 1,
        progress: bool = True,
        checkpoint: str = "",
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {top_k}")
        self.model, self.task = model, model.task
        self.thresholds, self.threshold_source = thresholds, threshold_source
        if thresholds is None and model.task.kind == "multi":
            self.thresholds = Thresholds.fixed(model.task.classes)
            self.threshold_source = f"{self.thresholds.global_threshold} (no metrics.json)"
        self.top_k, self.aggregate, self.workers, self.progress = top_k, aggregate, workers, progress
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        metrics: str | Path | None = None,
        threshold_kind: ThresholdKind = "class",
        device: str | torch.device = "auto",
        **kwargs: Any,
    ) -> Predictor:
        """Load ``path``; multi-label thresholds from ``metrics`` (or a ``metrics.json`` beside
        the checkpoint, as ``python -m eval --out`` writes it), else 0.5."""
        model = load_trained_model(path, resolve_device(device))
        if model.sample_kind != "audio":
            raise ValueError(
                f"{path}: trained on {model.sample_kind} shards (precomputed spectrogram images); "
                "predict reads audio files, so it needs a model trained on audio shards"
            )
        thresholds, source = None, ""
        if model.task.kind == "multi":
            found = Path(metrics) if metrics is not None else Path(path).parent / "metrics.json"
            if metrics is not None or found.is_file():
                thresholds = load_thresholds(found, model.task, model.name, threshold_kind)
                source = f"{found} ({threshold_kind}, tuned on {thresholds.split})"
        return cls(model, thresholds=thresholds, threshold_source=source, checkpoint=str(path), **kwargs)

    def __call__(self, inputs: Iterable[str | Path] | str | Path) -> PredictionReport:
        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        files, skipped = expand_inputs(items)
        with tempfile.TemporaryDirectory(prefix="musicstream-predict-") as tmp:
            manifest, rejects = self._transcode(files, Path(tmp))
            rows = self._score(manifest) if SPLIT in manifest.splits else {}
        order = sorted(rows)
        probs = np.stack([rows[i] for i in order]) if order else np.zeros((0, sum(self.task.head_sizes)))
        tracks = [
            {"path": str(files[i]), **d}
            for i, d in zip(order, describe(self.task, probs, top_k=self.top_k, thresholds=self.thresholds))
        ]
        failed = sorted(rejects, key=lambda r: int(r["key"]))  # input order, like the tracks
        rejected = skipped + [{"path": str(files[int(r["key"])]), "reason": r["reason"]} for r in failed]
        assert len(tracks) + len(rejects) == len(files), "every input is predicted or rejected"
        info: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "model": self.model.name,
            "aggregate": self.aggregate,
        }
        if self.thresholds is not None:
            info["thresholds"] = {
                "source": self.threshold_source,
                "values": [float(v) for v in self.thresholds.per_class],
            }
        return PredictionReport(self.task, tracks, probs, rejected, info)

    def _transcode(self, files: list[Path], tmp: Path) -> tuple[Manifest, list[dict[str, Any]]]:
        """The files as a one-split shard build at the model's sample rate; keys are input indices."""
        from shards.builder.config import BuildConfig
        from shards.builder.driver import build

        labels = placeholder_labels(self.task)
        records = [
            Record(key=f"{i}", audio=f, labels=labels, split=SPLIT, path=str(f)) for i, f in enumerate(files)
        ]
        cfg = BuildConfig(
            source="folder",
            root=tmp,
            out=tmp / "shards",
            task=self.task.kind,
            sample_rate=self.model.configs["features"].sample_rate,
            codec="pcm16",
            workers=self.workers,
            min_seconds=0.0,
        )
        manifest = build(
            cfg, progress=self.progress, dataset=Dataset(source="predict", task=self.task, records=records)
        )
        lines = (cfg.local_out / REJECTS).read_text().splitlines()
        return manifest, [json.loads(line) for line in lines if line.strip()]

    def _score(self, manifest: Manifest) -> dict[int, np.ndarray]:
        """Input index -> track probabilities, through the eval loader and ``eval.runner``."""
        from eval.runner import score_tracks
        from pipelines.loader import build_loader

        loader = build_loader(
            manifest, SPLIT, mode="eval", rank=0, world_size=1, device=self.model.device, **self.model.configs
        )
        bar = progress(loader, total=len(loader), desc="predict", unit="batch", enabled=self.progress)
        _, tracks = score_tracks(self.model, bar, self.task, aggregate=self.aggregate)
        index = track_index(manifest)
        return {index[int(t)]: p.numpy() for t, p in zip(tracks.track, tracks.probs)}


def track_index(manifest: Manifest) -> dict[int, int]:
    """Track id -> the sample's source key (here: the input's index), from the shards' .json members."""
    out: dict[int, int] = {}
    tars, _ = manifest.paths(SPLIT)
    for tar in tars:
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(f".{META_EXT}"):
                    f = tf.extractfile(m)
                    assert f is not None
                    meta = json.loads(f.read())
                    out[int(meta["tid"])] = int(meta["source_id"])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = CliParser(prog="python -m eval.predict", description="Predict genres/tags of audio files.")
    ap.add_argument(
        "inputs", nargs="+", help="audio files, folders (searched recursively) or CSVs with a 'path' column"
    )
    ap.add_argument("--checkpoint", required=True, type=Path, help="a musicstream checkpoint (best.pt)")
    ap.add_argument("--out", type=Path, default=Path("predictions"), help="folder for predictions.csv/.json")
    ap.add_argument(
        "--metrics",
        type=Path,
        help="python -m eval's metrics.json (tag thresholds; default: beside the checkpoint)",
    )
    ap.add_argument(
        "--thresholds", choices=["class", "global"], default="class", help="per-tag or global thresholds"
    )
    ap.add_argument("--top-k", type=int, default=5, help="classes/tags listed per track")
    ap.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="chunk -> track aggregation")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--workers", type=int, default=0, help="decoding processes (0 = all cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when at least one file was predicted, 1 when none could be, 2 on a usage error
    (one ``error:`` line)."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, metrics=args.metrics, threshold_kind=args.thresholds, device=args.device,
        top_k=args.top_k, aggregate=args.aggregate, workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    preds = predictor(args.inputs)
    paths = preds.write(args.out)
    for r in preds.rejected:
        print(f"not predicted: {r['path']}: {r['reason']}", file=sys.stderr)
    print(f"{len(preds.tracks)} tracks predicted, {len(preds.rejected)} not: {paths[0]}, {paths[1]}")
    return 0 if preds.tracks else 1


if __name__ == "__main__":
    sys.exit(main())
