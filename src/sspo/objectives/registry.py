"""The objective registry and :func:`policy_loss`, the one entry point every caller uses."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .cispo import cispo_terms
from .core import (
    AGG_MODES,
    SEQUENCE_AGG_MODES,
    LossOutput,
    Terms,
    aggregate,
    aggregate_sequences,
    effective_ratio,
    masked_stats,
    prepare_batch,
    sequence_weight_metrics,
)
from .gates import Gate
from .gmpo import gmpo_terms
from .grpo import grpo_terms
from .gspo import gspo_terms, gspo_token_terms
from .kl import KL_ESTIMATORS, kl_penalty
from .sapo import sapo_terms
from .sspo import sspo_terms


@dataclass(frozen=True)
class Objective:
    """A registered objective: its term function, whether it is sequence-level, its default mode."""

    name: str
    terms: Callable[..., Terms]
    sequence_level: bool
    default_agg_mode: str

    @property
    def defaults(self) -> dict:
        """Hyperparameter defaults, read from the term function's signature."""
        params = inspect.signature(self.terms).parameters
        return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


_OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("grpo", grpo_terms, False, "seq-mean-token-mean"),
        Objective("gspo", gspo_terms, True, "seq-mean-token-mean"),
        Objective("gspo_token", gspo_token_terms, True, "seq-mean-token-mean"),
        Objective("gmpo", gmpo_terms, True, "seq-mean-token-mean"),
        Objective("sapo", sapo_terms, False, "seq-mean-token-mean"),
        Objective("sspo", sspo_terms, True, "seq-mean-token-mean"),
        Objective("cispo", cispo_terms, False, "token-mean"),
    )
}
OBJECTIVES: tuple[str, ...] = tuple(_OBJECTIVES)

_POSITIVE = {"tau_pos", "tau_neg", "ratio_max", "log_weight_clamp"}
_NON_NEGATIVE = {"eps_low", "eps_high", "clip_low", "clip_high"}


def get_objective(name: str) -> Objective:
    """Look up an objective by name; the error lists the valid names."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    return _OBJECTIVES[name]


def _check_hyperparameters(objective: Objective, hp: dict) -> None:
    valid = objective.defaults
    for key, value in hp.items():
        if key not in valid:
            raise ValueError(
                f"objective {objective.name!r} has no hyperparameter {key!r}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
        if key in ("gate", "gate_neg"):
            if value is not None and not isinstance(value, str | Gate):
                raise ValueError(f"{key} must be a gate name or a Gate, got {type(value).__name__}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if key in _POSITIVE and not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")
        if key in _NON_NEGATIVE and not value >= 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if hp.get("eps_low", 0) >= 1:
        raise ValueError(f"eps_low must be < 1 (the clip's lower bound is 1 - eps_low), got {hp['eps_low']}")


def policy_loss(
    name: str,
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    loss_agg_mode: str | None = None,
    kl_coef: float = 0.0,
    ref_log_probs: Tensor | None = None,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    global_num_tokens=None,
    global_num_seqs=None,
    max_response_length: int | None = None,
    log_ratio_clamp: float = 20.0,
    check_finite: bool = True,
    **hyperparameters,
) -> LossOutput:
    """Loss ``−J + kl_coef·KL − entropy_coef·H`` of objective ``name`` (see docs/objectives.md) and its metrics.

    ``log_probs``/``old_log_probs``/``response_mask``: ``[B, T]``; ``advantages``: ``[B]`` or ``[B, T]``.
    KL and entropy are aggregated like the objective's token terms (``loss_agg_mode``).
    ``global_num_tokens`` / ``global_num_seqs`` are the whole batch's response-token and non-empty
    sequence counts: pass them when computing the loss per micro-batch so the micro-batch losses sum
    to the full-batch loss. Objective hyperparameters go in ``**hyperparameters``.
    """
    objective = get_objective(name)
    _check_hyperparameters(objective, hyperparameters)
    mode = loss_agg_mode or objective.default_agg_mode
    if mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r} is not one of {', '.join(AGG_MODES)}")
    if objective.sequence_level and mode not in SEQUENCE_AGG_MODES:
        raise ValueError(
            f"objective {name!r} is sequence-level: loss_agg_mode={mode!r} would weight sequences by "
            f"length; use one of {', '.join(SEQUENCE_AGG_MODES)}"
        )
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator={kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
    batch, metrics = prepare_batch(
        log_probs, old_log_probs, advantages, response_mask,
        log_ratio_clamp=log_ratio_clamp, check_finite=check_finite,
    )  # fmt: skip
    norms = {"global_num_tokens": global_num_tokens, "global_num_seqs": global_num_seqs}

    terms = objective.terms(batch, **hyperparameters)
    if terms.values.dim() == 1:
        objective_value = aggregate_sequences(terms.values, batch.seq_valid, global_num_seqs=global_num_seqs)
    else:
        objective_value = aggregate(terms.values, batch.mask, mode, max_response_length=max_response_length, **norms)
    loss = -objective_value
    metrics["pg_loss"] = loss.detach()
    metrics.update(masked_stats("ratio", torch.exp(batch.log_ratio), batch.mask))
    metrics.update(sequence_weight_metrics(terms.seq_weight, batch.seq_valid))
    metrics.update(terms.metrics)
    metrics["update/effective_ratio"] = effective_ratio(terms.kept, batch.mask)

    if kl_coef:
        if ref_log_probs is None:
            raise ValueError("kl_coef is non-zero but ref_log_probs is None")
        if ref_log_probs.shape != log_probs.shape:
            raise ValueError(
                f"ref_log_probs must have the shape of log_probs {tuple(log_probs.shape)}, got {tuple(ref_log_probs.shape)}"
            )
        ref = torch.where(batch.mask, ref_log_probs.detach().to(batch.log_probs.dtype), batch.log_probs.detach())
        kl = aggregate(kl_penalty(batch.log_probs, ref, kl_estimator, log_ratio_clamp), batch.mask, mode,
                       max_response_length=max_response_length, **norms)  # fmt: skip
        loss = loss + kl_coef * kl
        metrics["kl"] = kl.detach()
    if entropy is not None:
        if entropy.shape != log_probs.shape:
            raise ValueError(
                f"entropy must have the shape of log_probs {tuple(log_probs.shape)}, got {tuple(entropy.shape)}"
            )
        ent = torch.where(batch.mask, entropy.to(batch.log_probs.dtype), torch.zeros_like(batch.log_probs))
        mean_entropy = aggregate(ent, batch.mask, mode, max_response_length=max_response_length, **norms)
        if entropy_coef:
            loss = loss - entropy_coef * mean_entropy
        metrics["entropy"] = mean_entropy.detach()
    return LossOutput(loss, metrics)
