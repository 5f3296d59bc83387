"""``python -m eval --checkpoint CKPT [CKPT ...] --shards DIR --split test``."""

import sys

from eval.cli import main

sys.exit(main())
