"""``--verify`` for FMA: check each mp3 against the ``checksums`` file of its subset folder.

Every FMA archive (fma_small.zip, ...) has ``fma_SUBSET/checksums`` in ``sha1sum`` format:
one line per mp3, 40 hex digits, two spaces, the path relative to the subset folder
(``000/000002.mp3``); ``cd fma_small && sha1sum -c checksums`` is FMA's own check. A
mismatch is nearly always a truncated or half-extracted download, which decodes to a
shorter track without any error, so it is worth catching before training on it.
Files are hashed in threads (hashlib releases the GIL on large updates), with a progress bar.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shards import reasons
from shards.base.progress import progress
from shards.records import Record, Reject

LISTING = "checksums"
_LINE = re.compile(r"^([0-9a-fA-F]{40}) [ *](.+)$")
_BLOCK = 1 << 20


def read_checksums(path: Path) -> dict[str, str]:
    """``sha1sum`` lines -> {relative path: lowercase sha1}; a malformed line is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: checksums file not found (--verify needs the one FMA ships in each fma_SUBSET folder)"
        )
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.rstrip("\r"))
        if m is None:
            raise ValueError(f"{path}: line {n} is not '<sha1>  <path>' (sha1sum format): {line[:80]!r}")
        out[m.group(2).strip()] = m.group(1).lower()
    return out


def sha1_of(path: Path) -> str | None:
    """The file's sha1, or None when it cannot be read (the builder then reports it; a FIFO is
    never opened: that would wait for a writer)."""
    if reasons.file_fault(path) not in (None, reasons.empty_file()):
        return None
    h = hashlib.sha1()
    try:
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def verify_records(
    records: list[Record], subset_dir: Path, workers: int
) -> tuple[list[Record], list[Reject]]:
    """Records whose mp3 matches ``subset_dir/checksums`` (or is missing: the builder says so),
    and a reject for each mismatch or unlisted file."""
    sums = read_checksums(subset_dir / LISTING)
    listing = f"{subset_dir.name}/{LISTING}"
    paths = [r.audio for r in records]
    assert all(isinstance(p, Path) for p in paths)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        got = list(
            progress(
                pool.map(sha1_of, paths), total=len(paths), desc="verify sha1", unit="file", enabled=None
            )
        )
    kept, rejects = [], []
    for rec, digest in zip(records, got):
        rel = Path(rec.path).relative_to(subset_dir.name).as_posix()
        expected = sums.get(rel)
        if digest is None:  # missing or unreadable: the builder rejects it as such
            kept.append(rec)
        elif expected is None:
            rejects.append(Reject(path=rec.path, reason=reasons.not_in_checksums(listing), key=rec.key))
        elif digest != expected:
            rejects.append(
                Reject(
                    path=rec.path, reason=reasons.checksum_mismatch(digest, expected, listing), key=rec.key
                )
            )
        else:
            kept.append(rec)
    return kept, rejects
