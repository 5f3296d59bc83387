"""``python -m pipelines.bench``: DALI gpu / DALI cpu / webdataset+torchaudio, side by side."""

import sys

from pipelines.bench.throughput import main
from shards.base.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
