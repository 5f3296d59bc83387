"""The configured channels of a whole signal, framed as librosa frames it (``center=True``).

What the model sees, for a user to look at (``python -m pipelines.features``): the same DALI
nodes as the loader's graph (``pipelines.graph.spectra``: STFT, mel, dB; pre-emphasis as
``pipelines.signal.on_device``) and the same torch channel code (``FeatureAssembler``), on one
signal of any length instead of fixed chunks. Frame t is centred on sample ``t * hop``: the
signal is zero-padded by half a window in front (the loader pads each chunk the same way), so a
file's frames line up with ``librosa.stft`` / ``librosa.cqt`` frames of the same file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from pipelines.config import FeatureConfig
from pipelines.feature_stack import FeatureAssembler
from pipelines.graph import spectra


class WholeFile:
    """``signal (n,)`` float32 mono at ``features.sample_rate`` -> ``{channel: (rows, 1 + n // hop)}``
    before resizing and normalisation, each at the channel's own height."""

    def __init__(self, features: FeatureConfig, device: torch.device) -> None:
        self.features = features
        self.device = device
        # raw channels only: no normalisation (a 'meanstd' config needs no statistics here)
        plain = dataclasses.replace(features, normalize="none", norm_mean=None, norm_std=None)
        self.assembler = FeatureAssembler(plain, device)
        self.names = [
            "mel",
            *(["power"] if features.needs_power else []),
            *(["wave"] if features.needs_wave else []),
        ]
        self.pipe = _pipeline(features, device)
        self.pipe.build()

    def __call__(self, signal: np.ndarray) -> dict[str, np.ndarray]:
        f = self.features
        lead, n = f.window // 2, signal.shape[0]
        frames = 1 + n // f.hop_length
        self.pipe.feed_input("signal", [np.ascontiguousarray(signal, dtype=np.float32)])
        self.pipe.feed_input("anchor", [np.array([-lead], dtype=np.int32)])
        # long enough for every centred frame: (frames - 1) hops plus a window after the lead
        self.pipe.feed_input("shape", [np.array([(frames - 1) * f.hop_length + f.window], dtype=np.int32)])
        outs = {k: self._tensor(v) for k, v in zip(self.names, self.pipe.run())}
        mel = outs["mel"][:frames].T[None]  # (1, n_mels, T): the channels' layout
        power = outs["power"][:frames].T[None] if "power" in outs else None
        wave = outs["wave"][None] if "wave" in outs else None
        with torch.no_grad():
            raw = self.assembler.raw_channels(mel, None, power, wave)
        return {k: v[0].float().cpu().numpy() for k, v in raw.items()}

    def _tensor(self, batch: Any) -> torch.Tensor:
        """One DALI output (a batch of one) as a torch tensor on the channels' device."""
        cpu = batch.as_cpu() if hasattr(batch, "as_cpu") else batch
        return torch.from_numpy(np.array(cpu[0])).to(self.device)

    def close(self) -> None:
        self.pipe._shutdown()


def _pipeline(features: FeatureConfig, device: torch.device) -> Any:
    """The loader graph's signal nodes on one fed signal: DALI on the GPU for a CUDA device."""
    gpu = device.type == "cuda"
    gpu_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None

    @pipeline_def(batch_size=1, num_threads=1, device_id=gpu_id, seed=0, prefetch_queue_depth=1)  # type: ignore[call-overload,arg-type]
    def whole():  # type: ignore[no-untyped-def]
        signal = fn.external_source(name="signal", device="cpu", dtype=types.FLOAT, ndim=1)
        anchor = fn.external_source(name="anchor", device="cpu", dtype=types.INT32, ndim=1)
        shape = fn.external_source(name="shape", device="cpu", dtype=types.INT32, ndim=1)
        x = signal.gpu() if gpu else signal
        if features.preemphasis:  # as the loader's graph (pipelines.signal.on_device)
            x = fn.preemphasis_filter(x, preemph_coeff=features.preemphasis, border="clamp")
        padded = fn.slice(x, start=anchor, shape=shape, axes=[0], out_of_bounds_policy="pad")
        power, mel_db = spectra(features, padded)
        outs = [mel_db]
        if features.needs_power:
            outs.append(power)
        if features.needs_wave:
            outs.append(x)
        return tuple(outs)

    return whole()
