"""``python -m pipelines.bench SHARDS --config C --graph-ops [--json]``: the DALI operators of one
iteration of the ``gpu`` graph, train and eval, counted without CUDA.

DALI schedules per operator, so their count bounds the host's share of an iteration (at 50,000
chunks/s and 64 chunks a batch the host has ~1.3 ms per iteration for every CPU operator). The
count is what ``Pipeline._build_graph()`` collects: the reader, arithmetic and constants
included, by device ("mixed" counted as gpu); no pipeline is built, so no GPU is needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipelines.graph import GraphSpec, define_pipeline


def graph_ops(spec: GraphSpec, graph: Any = None) -> dict[str, int]:
    """``{"cpu": n, "gpu": m}``: the operators of ``spec``'s graph built for the GPU."""
    pipe = define_pipeline(dataclasses.replace(spec, device="gpu", device_id=0), graph=graph)
    pipe._build_graph()  # DALI's own graph walk: every operator the outputs depend on
    counts = {"cpu": 0, "gpu": 0}
    for op in pipe._ops:
        counts["cpu" if op._op.device == "cpu" else "gpu"] += 1
    return counts


def graph_ops_by_mode(shards: str | Path, cfg: dict[str, Any], split: str) -> dict[str, dict[str, int]]:
    """``{"train": {...}, "eval": {...}}`` for the build ``shards`` and the experiment's
    ``[features]``, ``[augment]`` and ``[loader]`` (the loaders are made, never run)."""
    from pipelines.loader import build_loader

    out = {}
    for mode in ("train", "eval"):
        loader = build_loader(
            shards, split, mode=mode, features=cfg["features"], augment=cfg["augment"], loader=cfg["loader"]
        )
        out[mode] = graph_ops(loader.spec, loader.graph)
    return out
