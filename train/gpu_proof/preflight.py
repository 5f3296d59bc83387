"""``python -m train.gpu_proof.preflight``: versions, and one DALI ``fn.spectrogram`` on the device.

Run by ``train.gpu_proof`` before any other stage, in a subprocess of its own (the proof's own
process never holds a CUDA context). The device machine's torch is not the project's pin, and DALI
finds cuFFT only through a copy some other package loaded: a missing library would otherwise
surface minutes later, as every stage failing. Imports torch before DALI, as the library does.
Prints one JSON document: ``versions``, ``smoke`` ({"status": "ok" | "error", ...}) and, for an
error, a one-line ``error`` that names the missing library when the message names one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

MODULES = ("torch", "torchaudio", "nvidia.dali", "timm", "numpy", "soundfile", "soxr", "webdataset")
MISSING_LIB = re.compile(r"(lib[\w.+-]+\.so(?:\.[\d.]+)?)")


def versions() -> dict[str, Any]:
    """Python, each of ``MODULES`` (None when it cannot be imported), torch's CUDA and cuDNN."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in MODULES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001  # a version report: an unimportable module is a figure too
            out[name] = f"unimportable: {type(e).__name__}: {str(e)[:200]}"
    import torch

    out["torch_cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def loaded_libraries(*names: str) -> dict[str, str]:
    """Paths of the shared libraries this process has mapped whose file names start with ``names``."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        base = Path(path).name
        if path.startswith("/") and base.startswith(names):
            found.setdefault(base, path)
    return found


def spectrogram_smoke(gpu: bool) -> dict[str, Any]:
    """One batch of ``fn.spectrogram`` (cuFFT on the GPU) on a generated signal."""
    import numpy as np
    import torch  # before DALI, as in every stage: its CUDA libraries are then the ones DALI finds
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=2, num_threads=1, device_id=0 if gpu else None)  # type: ignore[arg-type]
    def pipe():  # type: ignore[no-untyped-def]
        audio = fn.random.normal(shape=[8000], dtype=types.FLOAT)
        return fn.spectrogram(audio.gpu() if gpu else audio, nfft=256, window_length=256, window_step=128)

    t0 = time.perf_counter()
    p = pipe()
    p.build()
    (out,) = p.run()
    first = np.asarray(out.as_cpu().at(0) if gpu else out.at(0))
    del torch
    return {
        "status": "ok",
        "shape": [int(d) for d in first.shape],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def smoke(gpu: bool) -> dict[str, Any]:
    """``spectrogram_smoke`` or its error in one line, naming a missing library; the cuFFT /
    cuBLAS libraries mapped afterwards (which package's copy DALI found)."""
    try:
        result = spectrogram_smoke(gpu)
    except Exception as e:  # noqa: BLE001  # the preflight reports; the proof decides
        text = str(e)
        lib = MISSING_LIB.search(text)
        line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        what = f"missing library {lib.group(1)}: " if lib else ""
        result = {
            "status": "error",
            "error": f"DALI fn.spectrogram ({'gpu' if gpu else 'cpu'}): {what}{line}"[:400],
        }
    result["libraries"] = loaded_libraries("libcufft", "libcublas", "libcudart", "libnvimgcodec", "libnvjpeg")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m train.gpu_proof.preflight", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    args = ap.parse_args(argv)
    doc = {"versions": versions(), "smoke": smoke(args.device == "gpu")}
    print(json.dumps(doc, indent=2))
    return 0 if doc["smoke"]["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
