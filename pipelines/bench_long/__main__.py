"""``python -m pipelines.bench_long``: does training cost follow the audio used, not the track length?"""

import sys

from pipelines.bench.long_tracks import main
from shards.base.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
