"""The single-machine RLVR trainer: config, rollout, off-policy updates, checkpoints, logs, plots."""

from .config import ConfigError, TrainConfig, load_config
from .loop import Trainer, TrainingError, TrainingInterrupted, resume, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "TrainingError", "TrainingInterrupted", "load_config", "resume", "train"]
