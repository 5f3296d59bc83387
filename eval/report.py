"""The report folder: ``metrics.json``, ``report.md``, confusion matrices (CSV + PNG)
and multi-label PR curves. Several checkpoints share one side-by-side summary table,
like the seeds' results tables. Every file is written atomically."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from eval.plots import plot_confusion, plot_pr_curves
from eval.runner import EvalResult
from shards.base.atomic import atomic_open, atomic_write_text
from shards.base.tasks import TaskSpec, primary_metric

_SUMMARY = {
    "single": [
        "track/accuracy",
        "track/top3_accuracy",
        "track/top5_accuracy",
        "track/macro_f1",
        "chunk/accuracy",
    ],
    "multi": [
        "track/roc_auc",
        "track/pr_auc",
        "track/micro_f1",
        "track/macro_f1",
        "track/micro_f1_thr_global",
        "track/micro_f1_thr_class",
        "track/macro_f1_thr_class",
        "chunk/roc_auc",
    ],
    "hier": [
        "track/level_mean_accuracy",
        "track/path_level_mean_accuracy",
        "track/all_levels_accuracy",
        "chunk/level_mean_accuracy",
    ],
}


def summary_columns(task: TaskSpec, results: dict[str, EvalResult]) -> list[str]:
    """Metric keys of the side-by-side table: per kind, those any model reported."""
    keys = list(_SUMMARY[task.kind])
    if task.kind == "hier":
        keys[1:1] = [f"track/level/{lv.name}/accuracy" for lv in task.levels]
    primary = primary_metric(task.kind)  # first, as validation and best.pt rank by it
    keys = [primary, *(k for k in keys if k != primary)]
    return [k for k in keys if any(k in r.metrics for r in results.values())]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats with 4 decimals, NaN as n/a."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def file_stem(name: str) -> str:
    """A model name as a safe file-name prefix."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def write_report(
    out: str | Path,
    results: dict[str, EvalResult],
    task: TaskSpec,
    *,
    split: str,
    aggregate: str = "mean",
    max_pr_curves: int = 10,
) -> list[Path]:
    """Write every report file for ``results`` (model name -> result); returns the paths."""
    if not results:
        raise ValueError("write_report: no results")
    out = Path(out)  # (atomic writes make the folder)
    written, sections, stems = [], [], _unique_stems(list(results))
    for name, res in results.items():
        files = _model_files(out, name, stems[name], res, task, max_pr_curves)
        written += files
        sections.append(_model_section(name, res, files, out))
    cols = summary_columns(task, results)
    head = (
        f"# Evaluation on split `{split}`\n\n"
        f"Task `{task.name}` ({task.kind}); track = {aggregate} of chunk probabilities; primary metric "
        f"`{primary_metric(task.kind)}` (what validation and best.pt rank by).\n\n"
        "## Summary\n\n"
        + md_table(
            ["model", *cols], [[n, *(r.metrics.get(c, "–") for c in cols)] for n, r in results.items()]
        )
    )
    atomic_write_text(out / "report.md", head + "\n" + "\n".join(sections))
    payload = {
        "split": split,
        "aggregate": aggregate,
        "task": task.vocab(),
        "models": {
            n: {"metrics": r.metrics, "thresholds": r.thresholds.to_dict() if r.thresholds else None}
            for n, r in results.items()
        },
    }
    atomic_write_text(out / "metrics.json", json.dumps(_json_safe(payload), indent=2) + "\n")
    return [out / "metrics.json", out / "report.md", *written]


def _unique_stems(names: list[str]) -> dict[str, str]:
    """Model name -> file prefix; two names that sanitise alike get ``_2``, ``_3``..."""
    out: dict[str, str] = {}
    for name in names:
        stem, base, i = file_stem(name), file_stem(name), 2
        while stem in out.values():
            stem, i = f"{base}_{i}", i + 1
        out[name] = stem
    return out


def _model_files(
    out: Path, name: str, stem: str, res: EvalResult, task: TaskSpec, max_pr_curves: int
) -> list[Path]:
    files: list[Path] = []
    for cname, (labels, matrix) in res.details["track"].confusion.items():
        table, image = out / f"{stem}_{cname}.csv", out / f"{stem}_{cname}.png"
        with atomic_open(table, "w") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *labels])
            w.writerows([lab, *map(int, row)] for lab, row in zip(labels, matrix))
        files += [table, plot_confusion(matrix, labels, image, f"{name}: {cname}")]
    if task.kind == "multi":
        path = out / f"{stem}_pr_curves.png"
        files.append(
            plot_pr_curves(res.track.probs, res.track.target, task.classes, path, name, max_pr_curves)
        )
    return files


def _model_section(name: str, res: EvalResult, files: list[Path], out: Path) -> str:
    text = f"## {name}\n\n"
    if res.thresholds is not None:
        t = res.thresholds
        text += (
            f"Thresholds tuned on `{t.split}`: global {t.global_threshold:.4f} "
            f"(micro-F1 there {t.tuned_micro_f1_global:.4f}), per tag (micro-F1 there {t.tuned_micro_f1_class:.4f}).\n\n"
        )
    for tname, rows in res.details["track"].tables.items():
        if rows:
            headers = list(rows[0])
            text += (
                f"### {tname.replace('_', ' ')}\n\n"
                + md_table(headers, [[r[h] for h in headers] for r in rows])
                + "\n"
            )
    text += "".join(f"![{p.stem}]({p.relative_to(out)})\n\n" for p in files if p.suffix == ".png")
    return text


def _json_safe(v: Any) -> Any:
    """NaN (undefined metric) -> null, so metrics.json is strict JSON."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v
