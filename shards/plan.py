"""The build plan: which records a build writes, under which keys, in which order.

Deterministic for a config and an importer's records (a seeded shuffle per split, so classes
mix across shards), and fingerprinted, so a re-run recognises a plan it already started.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from shards.config import BuildConfig
from shards.records import SPLITS, Dataset, Record
from shards.writer import MAX_KEY, sanitize_key

_SEGMENT_SUFFIX = re.compile(r"-s\d+$")  # segment keys are KEY-sNNNN; no record key may look like one


def plan(ds: Dataset, seed: int) -> dict[str, list[tuple[str, Record]]]:
    """Unique sanitised keys, then a seeded shuffle per split (classes mix across shards)."""
    used: set[str] = set()
    by_split: dict[str, list[tuple[str, Record]]] = {}
    for rec in ds.records:
        base = sanitize_key(rec.key)[: MAX_KEY - 6]  # room for a segment suffix (-sNNNN)
        if _SEGMENT_SUFFIX.search(base):
            base += "x"
        key = base
        n = 1
        while key in used:
            n += 1
            suffix = f"_{n}"  # within MAX_KEY, or the writer refuses the key as unsanitised
            key = base[: MAX_KEY - len(suffix)] + suffix
        used.add(key)
        by_split.setdefault(rec.split, []).append((key, rec))
    order = [s for s in SPLITS if s in by_split] + sorted(set(by_split) - set(SPLITS))
    out = {}
    for i, split in enumerate(order):
        items = by_split[split]
        perm = np.random.default_rng([seed, i]).permutation(len(items))
        out[split] = [items[j] for j in perm]
    return out


def fingerprint(cfg: BuildConfig, ds: Dataset, planned: dict[str, list[tuple[str, Record]]]) -> str:
    h = hashlib.sha256(json.dumps(cfg.fingerprint_fields(), sort_keys=True, default=str).encode())
    h.update(json.dumps(ds.task.vocab(), sort_keys=True).encode())
    for split, items in planned.items():
        h.update(split.encode())
        for key, rec in items:
            h.update(f"{key}\0{rec.path}\0".encode())
    return h.hexdigest()
