"""Tools, not library: training throughput per model family (``python -m train.bench``) and how
input-bound a step is on the real loader (``python -m train.stepbench``)."""
