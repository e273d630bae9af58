"""Training: cached-feature head training, fine-tuning, resume state and the train pipeline.

- :mod:`~cxrdx.training.pipeline`: ``run_training(cfg, resume=False) -> RunOutcome``
- :mod:`~cxrdx.training.head_trainer`: ``train_head``; :mod:`~cxrdx.training.finetune`: ``finetune``
- :mod:`~cxrdx.training.resume`: optimizer state for ``--resume``; :mod:`~cxrdx.training.distributed`: torchrun / DDP

Import the submodule you need; this package imports nothing itself (a trained model is
saved and loaded by :mod:`cxrdx.models.run`).
"""
