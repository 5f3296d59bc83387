"""``python -m train.stepbench``: steps/s on GPU-resident synthetic batches vs the real loader."""

import sys

from shards.base.errors import run_cli
from train.bench.step import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
