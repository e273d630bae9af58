"""Training: cached-feature head training, fine-tuning, checkpoints, the train pipeline."""

from .checkpoint import load_checkpoint, save_checkpoint
from .head_trainer import TrainResult, predict_proba, train_head
from .pipeline import RunOutcome, build_model, load_dataset, run_training
from .seed import seed_everything

__all__ = [
    "RunOutcome", "TrainResult", "build_model", "load_checkpoint", "load_dataset", "predict_proba",
    "run_training", "save_checkpoint", "seed_everything", "train_head",
]
