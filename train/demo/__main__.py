"""``python -m train.demo`` (``make demo``): the whole tool end to end on a small synthetic dataset."""

import sys

from shards.base.errors import run_cli
from train.demo.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
