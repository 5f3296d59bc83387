"""musicstream training: ``torchrun -m train --config configs/X.toml`` (see docs/training.md).

Public pieces: ``train.config.load_experiment``, ``train.trainer.Trainer``,
``train.models.build_model``, ``train.loss.TaskLoss``, ``train.checkpoint.load_trained_model``,
``train.synthetic.SyntheticLoader``.
"""
