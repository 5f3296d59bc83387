"""``python -m train.bench``: samples/s per model family on synthetic batches."""

import sys

from shards.base.errors import run_cli
from train.bench.families import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
