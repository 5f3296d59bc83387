"""Named ``[features]`` settings (``features.preset``): what a pretrained model was trained on."""

from __future__ import annotations

import math
from typing import Any

_DB_PER_NEPER = 10.0 / math.log(10.0)  # 10*log10(x) = _DB_PER_NEPER * ln(x)
FEATURE_PRESETS: dict[str, dict[str, Any]] = {
    # What the AudioSet AST checkpoints (MIT/ast-finetuned-audioset-*) were trained on:
    # transformers' ASTFeatureExtractor defaults = torchaudio.compliance.kaldi.fbank at 16 kHz,
    # 25 ms window / 10 ms hop, 128 HTK-scale mel bins from 20 Hz, no filter normalisation,
    # pre-emphasis 0.97, natural-log energies floored at FLT_EPSILON, then (x - mean) / (2 std)
    # with mean -4.2677393, std 4.5689974. Our mel is in dB (10 log10), so the floor, mean and
    # std are carried over into dB. Remaining differences: kaldi removes each frame's DC offset
    # and uses a symmetric Hann window on frames that are not centred (docs/training.md).
    "ast_audioset": {
        "sample_rate": 16000,
        "n_fft": 512,
        "win_length": 400,
        "hop_length": 160,
        "n_mels": 128,
        "f_min": 20.0,
        "mel_formula": "htk",
        "mel_norm": False,
        "preemphasis": 0.97,
        "db_floor": round(_DB_PER_NEPER * math.log(1.192092955078125e-07), 4),
        "channels": ["mel"],
        "normalize": "meanstd",
        "norm_mean": [round(_DB_PER_NEPER * -4.2677393, 5)],
        "norm_std": [round(_DB_PER_NEPER * 4.5689974 * 2, 5)],
    },
}
