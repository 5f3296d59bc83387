"""Tiny but complete pipeline settings (8 kHz, 1 s chunks) for the benchmarks' dry runs, the
GPU acceptance run's CPU rehearsal and the tests: seconds of CPU, every code path taken."""

from __future__ import annotations

from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig

SMALL_FEATURES = dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, n_mfcc=13)


def small_overrides(**loader: object) -> list[str]:
    """The same tiny features as CLI overrides (``--features.k=v``, ``--loader.k=v``) for the CLIs."""
    items: list[tuple[str, str, object]] = [("features", k, v) for k, v in SMALL_FEATURES.items()]
    items += [("loader", k, v) for k, v in {"chunk_seconds": 1.0, "num_threads": 1, **loader}.items()]
    return [f"--{section}.{k}={v}" for section, k, v in items]


def small_configs(**loader: object) -> tuple[FeatureConfig, AugmentConfig, LoaderConfig]:
    """Tiny but complete settings (8 kHz, 1 s chunks) so CPU tests take seconds."""
    features = FeatureConfig(**SMALL_FEATURES)  # type: ignore[arg-type]
    aug = AugmentConfig(freq_masks=2, freq_width=6, time_masks=2, time_width=8)
    kw: dict = dict(
        batch_size=8,
        chunks_per_track=2,
        chunk_seconds=1.0,
        eval_tracks_per_batch=3,
        num_threads=1,
        initial_fill=8,
        prefetch=1,
    )
    kw.update(loader)
    return features, aug, LoaderConfig(**kw)
