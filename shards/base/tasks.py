"""What labels mean, for every stage: the task kinds, their vocabularies (``TaskSpec``), the
``.lbl`` encoding, and the one primary metric per kind.

The shard builder writes a ``TaskSpec`` into every manifest, the trainer checks checkpoints
against it, the evaluator reads names from it; none of them owns it. Plain data (numpy only,
no torch), so the builder's worker processes import it cheaply; what turns model outputs into
probabilities and decisions is ``shards.base.task_outputs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from shards.base.config import to_dict

TaskKind = Literal["single", "multi", "hier"]


@dataclass(kw_only=True)
class Level:
    """One level of a hierarchical task; ``parent[i]`` is class i's index one level up."""

    name: str
    classes: list[str]
    parent: list[int] | None = None


@dataclass(kw_only=True)
class TaskSpec:
    """What the labels mean: single-label classes, multi-label tags, or hierarchy levels."""

    kind: TaskKind
    name: str = "genre"
    classes: list[str] = field(default_factory=list)  # single: classes; multi: tags
    levels: list[Level] = field(default_factory=list)  # hier only

    def __post_init__(self) -> None:
        self.levels = [lv if isinstance(lv, Level) else Level(**lv) for lv in self.levels]
        if self.kind not in ("single", "multi", "hier"):
            raise ValueError(f"task.kind: {self.kind!r} is not single, multi or hier")
        if self.kind == "hier":
            if len(self.levels) < 2:
                raise ValueError("task.levels: a hierarchical task needs at least two levels")
            for up, lv in zip(self.levels, self.levels[1:]):
                if lv.parent is None or len(lv.parent) != len(lv.classes):
                    raise ValueError(f"task.levels[{lv.name}].parent: one parent per class needed")
                bad = [p for p in lv.parent if not 0 <= p < len(up.classes)]
                if bad:
                    raise ValueError(f"task.levels[{lv.name}].parent: indices {bad} outside level {up.name}")
        elif not self.classes:
            raise ValueError("task.classes: empty vocabulary")

    @property
    def head_sizes(self) -> list[int]:
        """Output sizes per head: one head, or one per hierarchy level."""
        if self.kind == "hier":
            return [len(lv.classes) for lv in self.levels]
        return [len(self.classes)]

    @property
    def label_width(self) -> int:
        """int64 entries in a sample's ``.lbl`` component."""
        return {"single": 1, "multi": len(self.classes), "hier": len(self.levels)}[self.kind]

    def vocab(self) -> dict[str, Any]:
        """The vocabulary as plain data (stored in checkpoints, compared on resume/eval)."""
        return to_dict(self)

    def encode(self, labels: Any) -> bytes:
        """Encode one sample's labels as the ``.lbl`` bytes.

        single: class name or index; multi: iterable of tag names; hier: one name per level.
        """
        if self.kind == "single":
            idx = labels if isinstance(labels, (int, np.integer)) else self.classes.index(labels)
            vec = [int(idx)]
        elif self.kind == "multi":
            pos = {t: i for i, t in enumerate(self.classes)}
            vec = [0] * len(self.classes)
            for t in labels:
                vec[pos[t]] = 1
        else:
            vec = [
                lv.classes.index(n) if isinstance(n, str) else int(n) for lv, n in zip(self.levels, labels)
            ]
            if len(vec) != len(self.levels):
                raise ValueError(f"hierarchical label {labels!r} needs {len(self.levels)} levels")
        return np.asarray(vec, dtype="<i8").tobytes()

    def decode(self, raw: bytes | np.ndarray) -> np.ndarray:
        arr = np.frombuffer(raw, dtype="<i8") if isinstance(raw, bytes) else np.asarray(raw)
        if arr.size != self.label_width:
            raise ValueError(f"label has {arr.size} entries, task {self.name} expects {self.label_width}")
        return arr


PRIMARY: dict[str, str] = {"single": "accuracy", "multi": "roc_auc", "hier": "level_mean_accuracy"}
"""The one number per task kind that validation reports first, ``best.pt`` is selected by
and reports lead with (unprefixed; the track-level key is ``primary_metric(kind)``)."""


def primary_metric(kind: str) -> str:
    """The track-level key of the task kind's primary metric, e.g. ``track/roc_auc``."""
    return f"track/{PRIMARY[kind]}"
