"""Reject reasons for audio files, worded so a user knows what to do; one text per fault.

Every importer and the decoder use these functions, so one fault reads the same in every
``rejects.jsonl`` (an empty FMA mp3 and an empty MagnaTagATune clip both say
``empty file (0 bytes)``). libsndfile's own text is not used for a file that exists: it
reports an unreadable file as "File does not exist or is not a regular file (possibly a
pipe?)", which sends the user looking for a missing file.
"""

from __future__ import annotations

import errno
import math
import stat
from pathlib import Path

MISSING = "missing file"
DIRECTORY = "a directory"
PERMISSION = "permission denied"
_SPECIAL = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def empty_file() -> str:
    """A file of 0 bytes (MagnaTagATune ships three, FMA downloads can end as one)."""
    return "empty file (0 bytes)"


def no_audio_frames(nbytes: int) -> str:
    """A non-empty file with no decodable audio in it (FMA's ~1.7 KB broken mp3s)."""
    return f"no audio frames ({nbytes} bytes)"


def too_short(seconds: float, min_seconds: float) -> str:
    """Decoded audio shorter than ``--min-seconds``; seconds rounded down to 0.01 s, so the
    stated length is never at or above the limit it failed."""
    shown = math.floor(seconds * 100 + 1e-6) / 100
    return f"too short: {shown:g} s < min_seconds {min_seconds:g}"


def checksum_mismatch(got: str, expected: str, listing: str) -> str:
    """The file's sha1 differs from the publisher's checksum list (usually a truncated download)."""
    return f"checksum mismatch: sha1 {got} != {expected} in {listing} (re-download the archive)"


def not_in_checksums(listing: str) -> str:
    return f"not listed in {listing}"


def unreadable(e: OSError) -> str:
    """An input that exists but cannot be read: ``permission denied``, ``unreadable: I/O error``..."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return MISSING
    if isinstance(e, PermissionError):
        return PERMISSION
    if e.errno == errno.EIO:
        return "unreadable: I/O error"
    return f"unreadable: {e.strerror or type(e).__name__}"


def file_fault(audio: Path | bytes) -> str | None:
    """Why an input cannot be read as audio before decoding it (missing, a directory, a FIFO
    or other special file, permission denied, an I/O error, empty); None if it might be.

    Every importer's inputs pass here (the decoder and the image packer call it), so one
    fault reads the same everywhere; a FIFO is never opened (that would wait for a writer)."""
    if isinstance(audio, bytes):
        return empty_file() if not audio else None
    try:
        file_stat = audio.stat()
    except OSError as e:
        return unreadable(e)
    if stat.S_ISDIR(file_stat.st_mode):
        return DIRECTORY
    if not stat.S_ISREG(file_stat.st_mode):
        return f"not a regular file: {_SPECIAL.get(stat.S_IFMT(file_stat.st_mode), 'special file')}"
    if file_stat.st_size == 0:
        return empty_file()
    try:
        with audio.open("rb") as f:
            f.read(1)
    except OSError as e:
        return unreadable(e)
    return None


def size_of(audio: Path | bytes) -> int:
    return len(audio) if isinstance(audio, bytes) else audio.stat().st_size


def not_audio(audio: Path | bytes) -> str:
    """Why libsndfile could not open a non-empty file: an MP4/M4A container (AAC, which it
    cannot decode) is named as such; anything else holds no audio frames it recognises."""
    if isinstance(audio, bytes):
        head = audio[:12]
    else:
        with audio.open("rb") as f:
            head = f.read(12)
    nbytes = size_of(audio)
    if head[4:8] == b"ftyp":
        return f"unsupported format: MP4/M4A ({nbytes} bytes); convert it to FLAC, WAV, OGG or MP3"
    return no_audio_frames(nbytes)
