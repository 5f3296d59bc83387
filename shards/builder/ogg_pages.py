"""A fixed Ogg stream serial number, so OGG/Vorbis members are the same bytes on every run.

libsndfile starts every Ogg stream with a serial number drawn from a generator seeded by the
time of day (``psf_rand_int32``), so the same audio encodes to different bytes in every
process, and shards built by two workers would differ. The serial is only a stream label
(a file here holds one stream): every page header's copy is replaced by ``SERIAL`` and the
page's CRC recomputed. libvorbis itself is deterministic.
"""

from __future__ import annotations

import struct
import zlib

SERIAL = 0x6D75736B  # any fixed value; b"musk" read as a big-endian number
_REVERSED_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(page: bytes) -> int:
    """The Ogg page CRC (polynomial 0x04C11DB7, MSB first, no reflection, initial value 0).

    zlib computes the bit-reflected CRC-32 of the same polynomial, so the Ogg CRC is zlib's
    over the bit-reversed bytes, with zlib's pre/post inversion undone, read bit-reversed."""
    raw = zlib.crc32(page.translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def with_serial(data: bytes, serial: int = SERIAL) -> bytes:
    """``data`` (a whole Ogg file) with every page's stream serial set to ``serial``."""
    buf = bytearray(data)
    pos = 0
    while pos < len(buf):
        if buf[pos : pos + 4] != b"OggS" or pos + 27 > len(buf):
            raise ValueError(f"not an Ogg page at byte {pos}")
        nseg = buf[pos + 26]
        size = 27 + nseg + sum(buf[pos + 27 : pos + 27 + nseg])
        struct.pack_into("<II", buf, pos + 14, serial, struct.unpack_from("<I", buf, pos + 18)[0])
        struct.pack_into("<I", buf, pos + 22, 0)
        struct.pack_into("<I", buf, pos + 22, ogg_crc(bytes(buf[pos : pos + size])))
        pos += size
    return bytes(buf)
