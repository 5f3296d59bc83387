"""``python -m train.gpu_proof``: the GPU path proved in one prepared run (``make gpu-proof``)."""

import sys

from shards.base.errors import run_cli
from train.gpu_proof.proof import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
