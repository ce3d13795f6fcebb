"""sspo: Soft Sequence Policy Optimization and its baselines for RL with verifiable rewards.

Main entry points: :func:`policy_loss` (every objective), :func:`group_advantages`,
:func:`token_logprobs` / :func:`token_logprobs_from_hidden` (chunked log-probs and entropy).
"""

from .advantages import ADVANTAGE_METHODS, group_advantages
from .logprobs import token_logprobs, token_logprobs_from_hidden
from .objectives import (
    AGG_MODES,
    GATES,
    KL_ESTIMATORS,
    OBJECTIVES,
    Gate,
    LossOutput,
    aggregate,
    get_objective,
    policy_loss,
    register_gate,
)

__version__ = "0.1.0"

__all__ = [
    "ADVANTAGE_METHODS",
    "AGG_MODES",
    "GATES",
    "KL_ESTIMATORS",
    "OBJECTIVES",
    "Gate",
    "LossOutput",
    "aggregate",
    "get_objective",
    "group_advantages",
    "policy_loss",
    "register_gate",
    "token_logprobs",
    "token_logprobs_from_hidden",
]
