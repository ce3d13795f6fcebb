"""sspo: Soft Sequence Policy Optimization and its baselines for RL with verifiable rewards.

Main entry points: :func:`policy_loss` (every objective), :func:`group_advantages`,
:func:`token_logprobs` / :func:`token_logprobs_from_hidden` (chunked log-probs and entropy), and the
trainer's :func:`train` / :func:`resume`. Attributes load lazily so ``sspo --help`` stays fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ADVANTAGE_METHODS": "sspo.advantages",
    "group_advantages": "sspo.advantages",
    "token_logprobs": "sspo.logprobs",
    "token_logprobs_from_hidden": "sspo.logprobs",
    "AGG_MODES": "sspo.objectives",
    "GATES": "sspo.objectives",
    "KL_ESTIMATORS": "sspo.objectives",
    "OBJECTIVES": "sspo.objectives",
    "Gate": "sspo.objectives",
    "LossOutput": "sspo.objectives",
    "aggregate": "sspo.objectives",
    "get_objective": "sspo.objectives",
    "policy_loss": "sspo.objectives",
    "register_gate": "sspo.objectives",
    "match_clip_temperatures": "sspo.objectives",
    "ROLLOUT_IS": "sspo.objectives",
    "ROLLOUT_RS": "sspo.objectives",
    "rollout_correction": "sspo.objectives",
    "TrainConfig": "sspo.trainer",
    "load_config": "sspo.trainer",
    "train": "sspo.trainer",
    "resume": "sspo.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sspo' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
