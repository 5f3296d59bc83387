"""The ``handoff`` stage of ``train.gpu_proof``: ``python -m pipelines.bench.handoff``, one
subprocess per case (audio first), each case's result saved as it ends.

An image case that cannot run (DALI's image decoders need nvImageCodec) or a crash loses nothing
else: the case's result is ``{"status": "error", "error": one line}``. The stage passes when every
case is ``ok``; ``inconclusive`` (a GPU whose control never showed the hazard) is reported as the
stage's status, not as a failure; ``failed`` or ``error`` fail it.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from train.gpu_proof.stages import Proc, StageFailed, StageTimeout

if TYPE_CHECKING:
    from train.gpu_proof.stages import Context

MIN_CASE_S = 10.0  # a case is not started with less than this left


def run_handoff(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    """The hand-off check first: a wrong answer there makes every later figure suspect. One
    subprocess per case (audio first), so an image case that cannot run (no nvImageCodec) or
    crashes loses nothing else; each result is saved as it ends."""
    from pipelines.bench.handoff import CASES, SLEEP_CYCLES

    results: dict[str, dict[str, Any]] = {}
    stage.update(results=results, sleep_cycles=SLEEP_CYCLES, device="cuda" if ctx.cuda else "cpu")
    for i, case in enumerate(CASES):
        left = deadline - time.monotonic()
        if left < MIN_CASE_S:
            results[case] = {"status": "error", "error": f"not run: {left:.0f} s left of the stage's budget"}
            continue
        results[case] = handoff_case(ctx, case, deadline, budget_s=left / (len(CASES) - i))
        ctx.save()
    stage["passed"] = all(r["status"] == "ok" for r in results.values())
    if bad := {c: r["status"] for c, r in results.items() if r["status"] in ("failed", "error")}:
        raise StageFailed(f"hand-off cases not passed: {bad}")
    stage["inconclusive"] = [c for c, r in results.items() if r["status"] == "inconclusive"]


def handoff_case(ctx: Context, case: str, deadline: float, budget_s: float) -> dict[str, Any]:
    """One case's result from its own ``python -m pipelines.bench.handoff --cases CASE``; an
    exit without one (a crash, the budget) is recorded as the case's error."""
    cmd = [ctx.python, "-m", "pipelines.bench.handoff", "--synth", str(ctx.work / "handoff"), "--json",
           "--device", "cuda" if ctx.cuda else "cpu", "--cases", case, "--budget-s", f"{max(budget_s - 10, 5):.0f}"]  # fmt: skip
    proc = Proc(cmd, f"handoff-{case}", ctx)
    try:
        rc = proc.wait(deadline)
    except StageTimeout as e:
        return {"status": "error", "error": str(e)}
    for line in proc.stdout().splitlines():
        if line.startswith('{"case"'):
            return dict(json.loads(line)["result"])
    tail = [line for line in proc.err_tail(600).splitlines() if line.strip()]
    return {"status": "error", "error": f"exit status {rc}: {tail[-1] if tail else 'no output'}"}
