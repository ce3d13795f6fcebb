"""Objectives: one pure function per objective over one shared core (masking, clamping,
aggregation, gates, metrics). Entry point: :func:`policy_loss`."""

from .core import AGG_MODES, LossOutput, aggregate, masked_mean, masked_sum
from .gates import GATES, Gate, get_gate, register_gate
from .kl import KL_ESTIMATORS, kl_penalty
from .registry import OBJECTIVES, Objective, get_objective, policy_loss

__all__ = [
    "AGG_MODES",
    "GATES",
    "KL_ESTIMATORS",
    "OBJECTIVES",
    "Gate",
    "LossOutput",
    "Objective",
    "aggregate",
    "get_gate",
    "get_objective",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "register_gate",
]
