"""The documented name of the input-bound check (``python -m train.stepbench``); the tool itself
is ``train.bench.step``."""
