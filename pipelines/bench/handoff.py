"""``python -m pipelines.bench.handoff --synth DIR``: does every batch survive a delayed torch stream?

The hazard (``pipelines.handoff``): the loader only queues its reads of DALI's output buffers on
torch's stream; if DALI got a buffer back before those reads ran, a batch would hold another
batch's features, with no error. This check makes the hazard as likely as it gets: after each
batch it queues ``torch.cuda._sleep`` on torch's stream, so the next batch's reads wait behind
it while the host (and DALI, prefetching) run ahead; then it compares every batch with a
reference run that synchronises after each batch. It runs once with the loader's hand-off lease
and once with the lease disabled (the control: how often the hazard shows on this machine), for
the audio loader (train, eval) and the image loader (train, eval): each case on its own (audio
first: DALI's image decoders need nvImageCodec, which a machine may lack), its result printed as
one JSON line as soon as it is known, an exception recorded as that case's result.

A case's ``status``: ``ok`` (0 mismatched with the lease; on a GPU the control showed the
hazard, so the check could have seen one), ``inconclusive`` (GPU: the control showed no hazard
even after escalating to longer sleeps and larger batches, so the pass proves nothing about the
lease), ``failed`` (a batch mismatched with the lease), ``error`` (the case could not run). On the
CPU no hazard exists: the control is ``n/a``, nothing escalates, and ``ok`` means the plumbing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipelines.bench.small import small_configs
from pipelines.handoff import BufferLease
from pipelines.loader import build_loader
from pipelines.music_loader import MusicLoader
from shards.base.errors import CliParser, first_line, run_cli

SLEEP_CYCLES = 20_000_000  # ~10 ms of GPU time per batch at H100/H200 clocks
X_TOL = 1e-4  # x is min-max normalised to [0, 1]: a wrong batch differs by far more
CASES = ("audio-train", "audio-eval", "image-train", "image-eval")  # audio first (no nvImageCodec needed)
# (sleep x, batch x) tried in turn on a GPU while the control shows no hazard: longer delays, then
# larger batches (chunks per track in training, tracks per batch in eval), while the budget allows
ESCALATION = ((1, 1), (4, 1), (4, 4))


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


def case_loader(case: str, folder: Path, device: str, scale: int = 1) -> Callable[[], MusicLoader]:
    """A factory of the loader of ``case`` (``KIND-MODE``) on the small shards under ``folder``
    (built on first use), with ``scale`` times the chunks per batch."""
    kind, mode = case.split("-")
    features, aug, loader_cfg = small_configs(
        batch_size=8 * scale, chunks_per_track=2 * scale, eval_tracks_per_batch=2 * scale
    )
    if kind == "image":
        features = dataclasses.replace(features, channels=["mel", "cqt", "chroma"], image_frames=48)
    shards = build_images(folder) if kind == "image" else build_audio(folder)
    return lambda: build_loader(shards, "train", mode=mode, features=features, augment=aug,  # type: ignore[arg-type]
                                loader=loader_cfg, device=device)  # fmt: skip


def verdict(attempts: list[dict[str, Any]], cuda: bool) -> dict[str, Any]:
    """A case's result from its attempts (the last one's figures first)."""
    last = attempts[-1]
    lease_ok = all(a["lease"]["mismatched"] == 0 and a["lease"]["batches"] > 0 for a in attempts)
    control = "n/a" if not cuda else "shown" if last["no_lease"]["mismatched"] else "not shown"
    status = "failed" if not lease_ok else "inconclusive" if control == "not shown" else "ok"
    return {"status": status, "control": control, "lease": last["lease"], "no_lease": last["no_lease"],
            "sleep_cycles": last["sleep_cycles"], "batch_scale": last["batch_scale"], "attempts": attempts}  # fmt: skip


def check_case(
    case: str, folder: Path, *, device: str, sleep_cycles: int = SLEEP_CYCLES, budget_s: float = 60.0
) -> dict[str, Any]:
    """One case with the lease and without it; on a GPU, escalated (``ESCALATION``) while the
    control shows no hazard and the next attempt (~4x the last) fits in ``budget_s``."""
    cuda, t_end = device == "cuda", time.monotonic() + budget_s
    attempts: list[dict[str, Any]] = []
    for sleep_x, batch_x in ESCALATION if cuda else ESCALATION[:1]:
        t0 = time.monotonic()
        make, cycles = case_loader(case, folder, device, batch_x), sleep_cycles * sleep_x
        attempts.append({"sleep_cycles": cycles, "batch_scale": batch_x,
                         "lease": delayed_stream_check(make, lease=True, sleep_cycles=cycles),
                         "no_lease": delayed_stream_check(make, lease=False, sleep_cycles=cycles)})  # fmt: skip
        if verdict(attempts, cuda)["status"] != "inconclusive":
            break
        if time.monotonic() + 4 * (time.monotonic() - t0) > t_end:
            attempts[-1]["next_skipped"] = "out of the case's budget"
            break
    return verdict(attempts, cuda)


def run_case(case: str, folder: Path, *, device: str, sleep_cycles: int, budget_s: float) -> dict[str, Any]:
    """``check_case``, or ``{"status": "error", "error": one line}`` when the case cannot run."""
    t0 = time.monotonic()
    try:
        result = check_case(case, folder, device=device, sleep_cycles=sleep_cycles, budget_s=budget_s)
    except Exception as e:  # noqa: BLE001  # one case's failure (e.g. no nvImageCodec) must not lose the others
        result = {"status": "error", "error": f"{type(e).__name__}: {first_line(e)}"[:500]}
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def run_checks(
    audio_and_images: Path, sleep_cycles: int = SLEEP_CYCLES, device: str = "cuda",
    cases: tuple[str, ...] = CASES, budget_s: float = 60.0, emit: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every case in turn (each with ``budget_s`` for its escalation); ``emit(case, result)`` as each ends."""
    results = {}
    for case in cases:
        results[case] = run_case(
            case, audio_and_images, device=device, sleep_cycles=sleep_cycles, budget_s=budget_s
        )
        if emit is not None:
            emit(case, results[case])
    return summary(results, sleep_cycles, device)


def summary(results: dict[str, dict[str, Any]], sleep_cycles: int, device: str) -> dict[str, Any]:
    """The document the CLI prints last: ``passed`` when every case is ok (inconclusive: not passed)."""
    return {
        "results": results,
        "passed": bool(results) and all(r["status"] == "ok" for r in results.values()),
        "sleep_cycles": sleep_cycles,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def build_audio(folder: Path) -> Path:
    """Small synthetic audio shards under ``folder`` (built once)."""
    from shards.bench.synth import build_synth_shards

    audio = folder / "audio"
    if not (audio / "manifest.json").is_file():
        build_synth_shards(audio, tracks=48, seconds=3.0, sample_rate=8000, shard_size_mb=0.2)
    return audio


def build_images(folder: Path) -> Path:
    """Small synthetic image shards under ``folder`` (built once)."""
    from pipelines.bench.synth_images import build_synth_image_shards

    images = folder / "images"
    if not (images / "manifest.json").is_file():
        build_synth_image_shards(images, raw=folder / "images-raw", tracks=32, seconds=3.0)
    return images


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.bench.handoff", description=__doc__.splitlines()[0])
    ap.add_argument("--synth", type=Path, required=True, help="folder for the small synthetic shards")
    ap.add_argument("--sleep-cycles", type=int, default=SLEEP_CYCLES)
    ap.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the plumbing only (dry run)"
    )
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    ap.add_argument("--budget-s", type=float, default=60.0, help="seconds per case for escalating")
    ap.add_argument(
        "--json", action="store_true", help="one JSON line per case as it ends, then one document"
    )
    args = ap.parse_args(argv)
    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    if bad := [c for c in cases if c not in CASES]:
        ap.error(f"--cases: unknown {bad}; choose from {CASES}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")

    def emit(case: str, result: dict[str, Any]) -> None:
        line = json.dumps({"case": case, "result": result}) if args.json else f"{case}: {result}"
        print(line, flush=True)

    doc = run_checks(args.synth, sleep_cycles=args.sleep_cycles, device=args.device, cases=cases,
                     budget_s=args.budget_s, emit=emit)  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
