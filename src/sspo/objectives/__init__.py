"""Objectives: one pure function per objective over one shared core (masking, clamping,
aggregation, gates, metrics). Entry point: :func:`policy_loss`; the maths: docs/objectives.md."""

from .core import AGG_MODES, LossOutput, aggregate, masked_mean, masked_sum
from .gate_checks import check_gate
from .gates import BUILTIN_GATES, GATES, Gate, gate_names, get_gate, register_gate
from .kl import KL_ESTIMATORS, kl_penalty
from .registry import OBJECTIVES, Objective, get_objective, policy_loss
from .rollout_correction import ROLLOUT_IS, ROLLOUT_RS, RolloutCorrection, rollout_correction
from .temperatures import match_clip_temperatures, token_weight

__all__ = [
    "AGG_MODES",
    "BUILTIN_GATES",
    "GATES",
    "KL_ESTIMATORS",
    "OBJECTIVES",
    "ROLLOUT_IS",
    "ROLLOUT_RS",
    "RolloutCorrection",
    "Gate",
    "LossOutput",
    "Objective",
    "aggregate",
    "check_gate",
    "gate_names",
    "get_gate",
    "get_objective",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "match_clip_temperatures",
    "policy_loss",
    "register_gate",
    "rollout_correction",
    "token_weight",
]
