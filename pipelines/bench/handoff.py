"""``python -m pipelines.bench.handoff --synth DIR``: does every batch survive a delayed torch stream?

The hazard (``pipelines.handoff``): the loader only queues its reads of DALI's output buffers on
torch's stream; if DALI got a buffer back before those reads ran, a batch would hold another
batch's features, with no error. This check makes the hazard as likely as it gets: after each
batch it queues ``torch.cuda._sleep`` on torch's stream, so the next batch's reads wait behind
it while the host (and DALI, prefetching) run ahead; then it compares every batch with a
reference run that synchronises after each batch. It runs once with the loader's hand-off lease
and once with the lease disabled (the control: how often the hazard shows on this machine), for
the audio loader (train, eval) and the image loader (train, eval). Needs CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipelines.bench.small import small_configs
from pipelines.config import FeatureConfig
from pipelines.handoff import BufferLease
from pipelines.loader import MusicLoader, build_loader
from shards.base.errors import CliParser, run_cli

SLEEP_CYCLES = 20_000_000  # ~10 ms of GPU time per batch at H100/H200 clocks
X_TOL = 1e-4  # x is min-max normalised to [0, 1]: a wrong batch differs by far more


def _clone(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in batch.items()}


def _differs(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> float:
    """Max |x difference| (inf when shapes, labels or track ids differ)."""
    if ref.keys() != got.keys() or ref["x"].shape != got["x"].shape:
        return float("inf")
    if any(not torch.equal(ref[k], got[k]) for k in ref if k != "x"):
        return float("inf")
    return float((ref["x"] - got["x"]).abs().max())


def delayed_stream_check(
    make: Callable[[], MusicLoader], *, lease: bool, sleep_cycles: int = SLEEP_CYCLES
) -> dict[str, Any]:
    """Every batch of one pass, read behind a ``torch.cuda._sleep`` per batch, against a reference
    pass that synchronises after each batch. ``lease=False`` disables the hand-off (control).
    On the CPU (the dry run) the same comparison runs without delays: the plumbing, not the hazard."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ref = []
    for batch in make():
        ref.append(_clone(batch))
        sync()
    loader = make()
    if not lease:
        loader.lease = BufferLease(torch.device("cpu"), 1)  # holds nothing: the buffers go back at once
        close = loader.close  # but let the pass end's shutdown (which frees DALI's pool) wait for the GPU
        loader.close = lambda: (sync(), close())[1]  # type: ignore[method-assign]
    got, t0 = [], time.perf_counter()
    for batch in loader:
        if cuda:
            torch.cuda._sleep(sleep_cycles)  # the next batch's reads queue behind this
        got.append(_clone(batch))  # queued too: no synchronisation inside the pass
    sync()
    seconds = time.perf_counter() - t0
    diffs = [_differs(g, r) for g, r in zip(got, ref)]
    return {
        "batches": len(ref),
        "yielded": len(got),
        "mismatched": sum(d > X_TOL for d in diffs) + abs(len(got) - len(ref)),
        "max_abs_diff": max(diffs, default=0.0),
        "host_waits": loader.lease.waits,
        "seconds": round(seconds, 3),
    }


def cases(audio: Path, images: Path | None, device: str = "cuda") -> dict[str, Callable[[], MusicLoader]]:
    """Loader factories (DALI on ``device``) for each loader kind and mode."""
    audio_features, aug, loader_cfg = small_configs(eval_tracks_per_batch=2)
    image_features = dataclasses.replace(audio_features, channels=["mel", "cqt", "chroma"], image_frames=48)

    def factory(shards: Path, mode: str, features: FeatureConfig) -> Callable[[], MusicLoader]:
        return lambda: build_loader(shards, "train", mode=mode, features=features, augment=aug,  # type: ignore[arg-type]
                                    loader=loader_cfg, device=device)  # fmt: skip

    out = {f"audio-{mode}": factory(audio, mode, audio_features) for mode in ("train", "eval")}
    if images is not None:
        out.update({f"image-{mode}": factory(images, mode, image_features) for mode in ("train", "eval")})
    return out


def run_checks(
    audio: Path, images: Path | None, sleep_cycles: int = SLEEP_CYCLES, device: str = "cuda"
) -> dict[str, Any]:
    """Every case with the lease (must be 0 mismatched) and without it (the control)."""
    results = {}
    for name, make in cases(audio, images, device).items():
        results[name] = {
            "lease": delayed_stream_check(make, lease=True, sleep_cycles=sleep_cycles),
            "no_lease": delayed_stream_check(make, lease=False, sleep_cycles=sleep_cycles),
        }
    return {
        "results": results,
        "passed": all(r["lease"]["mismatched"] == 0 and r["lease"]["batches"] > 0 for r in results.values()),
        "sleep_cycles": sleep_cycles,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def build_inputs(folder: Path) -> tuple[Path, Path]:
    """Small audio and image shards under ``folder`` (built once)."""
    from pipelines.bench.synth_images import build_synth_image_shards
    from shards.bench.synth import build_synth_shards

    audio, images = folder / "audio", folder / "images"
    if not (audio / "manifest.json").is_file():
        build_synth_shards(audio, tracks=48, seconds=3.0, sample_rate=8000, shard_size_mb=0.2)
    if not (images / "manifest.json").is_file():
        build_synth_image_shards(images, raw=folder / "images-raw", tracks=32, seconds=3.0)
    return audio, images


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.bench.handoff", description=__doc__.splitlines()[0])
    ap.add_argument("--synth", type=Path, required=True, help="folder for the small synthetic shards")
    ap.add_argument("--sleep-cycles", type=int, default=SLEEP_CYCLES)
    ap.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the plumbing only (dry run)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")
    doc = run_checks(*build_inputs(args.synth), sleep_cycles=args.sleep_cycles, device=args.device)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for name, r in doc["results"].items():
            print(f"{name}: with lease {r['lease']}; without {r['no_lease']}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
