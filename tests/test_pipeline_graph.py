"""Graph-level pieces checked in isolation (tiny DALI CPU pipelines, no shards)."""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def

from pipelines.graph import chunk_count
from pipelines.signal import length_of


def test_chunk_count_is_exact_for_long_tracks():
    """A track one sample past 130 six-second chunks (13 min at 22050 Hz: more length_of than
    float32 counts exactly) has 131 chunks; float32 arithmetic lost the last one."""
    chunk = 6 * 22050
    lens = [130 * chunk + 1, 130 * chunk, chunk - 1, 1]

    @pipeline_def(batch_size=len(lens), num_threads=1, device_id=None)
    def pipe():  # type: ignore[no-untyped-def]
        audio = fn.external_source(source=lambda: [np.zeros(n, np.int16) for n in lens], batch=True)
        return chunk_count(length_of(audio), chunk)

    p = pipe()
    p.build()
    (out,) = p.run()
    assert [int(np.asarray(out[i])[0]) for i in range(len(lens))] == [131, 130, 1, 1]
