"""The markdown block of a ``train.gpu_proof`` run, ready for docs/benchmarks.md.

Written from the JSON alone (after every stage), so a partial run gives a partial block.
"""

from __future__ import annotations

from typing import Any

PIPELINE_COLS = [
    ("pipeline", "pipeline"),
    ("chunks_per_s", "chunks/s"),
    ("audio_hours_per_s", "audio h/s"),
    ("mean_wait_ms", "mean wait ms"),
    ("cpu_cores", "CPU cores (process)"),
    ("machine_cpu_cores", "CPU cores (machine)"),
    ("gpu_mem_device_mib", "GPU MiB (device)"),
    ("gpu_mem_torch_peak_mib", "GPU MiB (torch peak)"),
]


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _pipeline(title: str, stage: dict[str, Any]) -> list[str]:
    sh = stage.get("shards")
    if not sh:
        return []
    lines = [
        f"**{title}**: {sh['tracks']} tracks x {sh['seconds']:g} s, {sh['codec']} at {sh['sample_rate']} Hz "
        f"({sh['distinct']} distinct signals, {sh['gb']} GB, splits {sh['splits']}; built in "
        f"{stage.get('shards_build_s', '-')} s); workers = DALI threads = {stage.get('workers', '-')}; "
        f"load average after {stage.get('load_average', '-')}.",
        "",
    ]
    results = stage.get("results") or []
    if results:
        cols = [(k, h) for k, h in PIPELINE_COLS if any(k in r for r in results)]
        lines += _table([h for _, h in cols], [[r.get(k) for k, _ in cols] for r in results])
        by = {r["pipeline"]: r for r in results}
        if "baseline" in by and by["baseline"]["chunks_per_s"] > 0:
            ratios = [
                f"{n} {by[n]['chunks_per_s'] / by['baseline']['chunks_per_s']:.2f}x"
                for n in by
                if n != "baseline"
            ]
            lines += ["", f"vs the baseline: {', '.join(ratios)} (targets, one GPU: DALI gpu >= 20,000 chunks/s "
                      "with <= 4 CPU cores busy, >= 10x the baseline)"]  # fmt: skip
    else:
        lines.append(f"(no figures: {stage.get('status')}: {str(stage.get('error', ''))[:300]})")
    return [*lines, ""]


def _input_bound(stage: dict[str, Any]) -> list[str]:
    rows = stage.get("rows") or []
    if not rows:
        return []
    ok = [r for r in rows if r["status"] == "ok"]
    shape = (
        f"shape {tuple(ok[0]['shape'])}, batch {ok[0]['batch']}, real loader {ok[0]['pipeline']}"
        if ok
        else ""
    )
    lines = [f"**Input-bound** (bf16 autocast + channels_last; {shape}; target vs_synthetic >= 0.95):", ""]
    lines += _table(
        [
            "family",
            "params (M)",
            "synthetic resident steps/s",
            "real loader steps/s",
            "vs_synthetic",
            "seconds",
        ],
        [
            [
                r["family"],
                r.get("params_m"),
                r.get("synthetic_steps_per_s"),
                r.get("real_steps_per_s"),
                r.get("vs_synthetic", r["status"]),
                r["seconds"],
            ]  # fmt: skip
            for r in rows
        ],
    )
    return [*lines, ""]


def _resume(stage: dict[str, Any]) -> list[str]:
    c = stage.get("comparison")
    if not c:
        return (
            [
                f"**Resume** ({stage.get('status')}): {str(stage.get('error', stage.get('reason', '')))[:300]}",
                "",
            ]
            if stage
            else []
        )
    pos = c["position_full"]
    verdict = (
        "passed" if stage.get("passed") else "FAILED " + str([k for k, v in c["checks"].items() if not v])
    )
    return [
        f"**Resume** ({stage['backend']}{', NCCL ' + str(stage['nccl_version']) if stage.get('nccl_version') else ''}): "
        f"torchrun 1 rank, {stage['steps']} steps; SIGTERM at logged step {stage['signalled_at_logged_step']}, stopped "
        f"at step {stage['stopped_at_step']}, `--checkpoint.resume=auto` to {pos['step']} ({stage.get('resume_s')} s) vs "
        f"uninterrupted: position {pos['epoch']}/{pos['batch_in_epoch']} (epoch/batch) "
        f"{'equal' if c['checks']['same_step_and_loader_position'] else 'DIFFERENT'}, plan position "
        f"{'equal' if c['plan_position_equal'] else 'DIFFERENT'}, lr {c['lr_full']:.3g} vs {c['lr_resumed']:.3g}, "
        f"loss {c['loss_full']:.5f} vs {c['loss_resumed']:.5f} (rel {c['loss_rel_diff']:.1e} <= "
        f"{c['tolerances']['loss_rel_diff']:g}), weights rel L2 {c['weights_rel_l2']:.1e} <= "
        f"{c['tolerances']['weights_rel_l2']:g} (max abs {c['weights_max_abs']:.1e}): **{verdict}**.",
        "",
    ]


def _preflight(stage: dict[str, Any]) -> list[str]:
    v, smoke = stage.get("versions"), stage.get("smoke")
    if not v or not smoke:
        return []
    names = ", ".join(f"{k} {val}" for k, val in v.items())
    cufft = next(
        (p for name, p in smoke.get("libraries", {}).items() if name.startswith("libcufft")), "not loaded"
    )
    did = f"ok, shape {smoke['shape']}" if smoke["status"] == "ok" else f"**{smoke.get('error')}**"
    return [f"**Preflight**: {names}. DALI `fn.spectrogram`: {did}; cuFFT from {cufft}.", ""]


def _handoff(stage: dict[str, Any]) -> list[str]:
    results = stage.get("results") or {}
    if not results:
        return []
    how = (f"a `torch.cuda._sleep({stage.get('sleep_cycles')})` queued after every batch, escalated while the "
           "control shows no hazard" if stage.get("device") != "cpu" else "DALI cpu, no delays: the plumbing only")  # fmt: skip
    verdict = "passed" if stage.get("passed") else stage.get("status", "FAILED").upper()
    lines = [f"**Hand-off** ({how}; each batch compared with a synchronised pass; one process per case): "
             f"**{verdict}**.", ""]  # fmt: skip
    rows = []
    for name, r in results.items():
        lease, ctrl = r.get("lease", {}), r.get("no_lease", {})
        control = f"{r['control']} ({ctrl.get('mismatched')})" if "control" in r else ""
        scale = f"{r['sleep_cycles']:.0e} / x{r['batch_scale']}" if "sleep_cycles" in r else ""
        rows.append([name, r["status"], lease.get("batches"), lease.get("mismatched"), lease.get("host_waits"),
                     control, scale, r.get("seconds"), str(r.get("error", ""))[:120].replace("|", "/")])  # fmt: skip
    head = ["loader", "status", "batches", "mismatched (lease)", "host waits (lease)",
            "control: no lease (mismatched)", "sleep cycles / batch", "seconds", "error"]  # fmt: skip
    return [*lines, *_table(head, rows), ""]


def _figures(stage: dict[str, Any]) -> list[str]:
    figures = stage.get("figures") or {}
    if not figures:
        return []
    rows = [[test.rsplit(".", 1)[-1], ", ".join(f"{k} {v}" for k, v in props.items())]
            for test, props in figures.items()]  # fmt: skip
    return ["**Figures the gpu tests recorded**:", "", *_table(["test", "figures"], rows), ""]


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    where = f"{m['gpu']} ({m['gpu_memory']}, driver {m['driver']})" if "gpu" in m else "CPU dry run (no GPU)"
    stages = doc["stages"]
    lines = [
        f"### GPU proof: {where}, {doc['started']}",
        "",
        f"`{doc['command']}`: {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']}"
        f"{', DALI ' + stages['pipeline_bench']['bench_machine'].get('dali', '?') if stages.get('pipeline_bench', {}).get('bench_machine') else ''}; "
        f"{doc.get('elapsed_s', 0)} s of the {doc['total_budget_s']:g} s budget.",
        "",
    ]
    lines += _table(
        ["stage", "status", "seconds", "budget s", "note"],
        [
            [
                name,
                stage["status"],
                stage.get("seconds", ""),
                stage["budget_s"],
                str(stage.get("error", stage.get("reason", "")))[:160].replace("|", "/").replace("\n", " "),
            ]  # fmt: skip
            for name, stage in stages.items()
        ],
    )
    lines.append("")
    lines += _preflight(stages.get("preflight", {}))
    lines += _handoff(stages.get("handoff", {}))
    t = stages.get("gpu_tests")
    if t and "passed" in t:
        fails = f"; failing: {', '.join(t['failures'])}" if t["failures"] else ""
        lines += [f"**gpu tests** (`-m \"{t.get('markers', 'gpu')}\"`): {t['passed']} passed, {t['failed']} failed, "
                  f"{t['errors']} errors, {t['skipped']} skipped{fails}.", ""]  # fmt: skip
        lines += _figures(t)
    lines += _pipeline("Input pipeline", stages.get("pipeline_bench", {}))
    lines += _input_bound(stages.get("input_bound", {}))
    lines += _resume(stages.get("resume", {}))
    lines += _pipeline("Input pipeline, FLAC", stages.get("pipeline_bench_flac", {}))
    return "\n".join(lines).rstrip() + "\n"
