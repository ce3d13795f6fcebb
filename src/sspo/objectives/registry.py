"""The objective registry and :func:`policy_loss`, the one entry point every caller uses."""

from __future__ import annotations

import dataclasses
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
    _check_tensor,
    aggregate,
    aggregate_sequences,
    as_bool_mask,
    effective_ratio,
    masked_mean,
    masked_stats,
    prepare_batch,
    sequence_weight_metrics,
)
from .dppo import dppo_kl_terms, dppo_tv_terms
from .gates import Gate
from .gmpo import gmpo_terms
from .grpo import grpo_terms
from .gspo import gspo_terms, gspo_token_terms
from .kl import KL_ESTIMATORS, kl_penalty
from .luspo import luspo_terms
from .m2po import m2po_terms
from .rollout_correction import rollout_correction, rollout_log_weight
from .sapo import sapo_terms
from .sspo import sspo_terms
from .vespo import vespo_terms


@dataclass(frozen=True)
class Objective:
    """A registered objective: its term function, whether it is sequence-level, its default mode, the
    aggregation modes it accepts and whether it folds a rollout correction into its own weight."""

    name: str
    terms: Callable[..., Terms]
    sequence_level: bool
    default_agg_mode: str
    agg_modes: tuple[str, ...] = AGG_MODES
    own_rollout_weight: bool = False

    @property
    def defaults(self) -> dict:
        """Hyperparameter defaults, read from the term function's signature."""
        params = inspect.signature(self.terms).parameters
        return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


_OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("grpo", grpo_terms, False, "seq-mean-token-mean"),
        Objective("gspo", gspo_terms, True, "seq-mean-token-mean", SEQUENCE_AGG_MODES),
        Objective("gspo_token", gspo_token_terms, True, "seq-mean-token-mean", SEQUENCE_AGG_MODES),
        Objective("gmpo", gmpo_terms, True, "seq-mean-token-mean", SEQUENCE_AGG_MODES),
        Objective("sapo", sapo_terms, False, "seq-mean-token-mean"),
        Objective("sspo", sspo_terms, True, "seq-mean-token-mean", SEQUENCE_AGG_MODES),
        Objective("cispo", cispo_terms, False, "token-mean"),
        Objective("vespo", vespo_terms, False, "token-mean", own_rollout_weight=True),
        Objective("luspo", luspo_terms, True, "seq-mean-token-sum", ("seq-mean-token-sum",)),
        Objective("dppo_tv", dppo_tv_terms, False, "token-mean"),
        Objective("dppo_kl", dppo_kl_terms, False, "token-mean"),
        Objective("m2po", m2po_terms, False, "token-mean"),
    )
}
OBJECTIVES: tuple[str, ...] = tuple(_OBJECTIVES)

_POSITIVE = {"tau_pos", "tau_neg", "ratio_max", "log_weight_clamp", "lambda_pos", "lambda_neg", "clip_ratio_c",
             "m2_threshold"}  # fmt: skip
_NON_NEGATIVE = {"eps_low", "eps_high", "clip_low", "clip_high", "k_pos", "k_neg",
                 "clip_ratio", "clip_ratio_low", "clip_ratio_high"}  # fmt: skip
_LENGTH_REASON = {
    True: "is sequence-level: loss_agg_mode={mode!r} would weight sequences by length",
    "luspo": "scales each sequence's term by its length itself: loss_agg_mode={mode!r} would change that weighting",
}


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
        if value is None and valid[key] is None:
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
    rollout_log_probs: Tensor | None = None,
    rollout_is: str | None = None,
    rollout_is_threshold: float | str = 2.0,
    rollout_is_batch_normalize: bool = False,
    rollout_rs: str | None = None,
    rollout_rs_threshold: float | str | None = None,
    bypass_mode: bool = False,
    rollout_is_weights: Tensor | None = None,
    **hyperparameters,
) -> LossOutput:
    """Loss ``−J + kl_coef·KL − entropy_coef·H`` of objective ``name`` (see docs/objectives.md) and its metrics.

    ``log_probs``/``old_log_probs``/``response_mask``: ``[B, T]``; ``advantages``: ``[B]`` or ``[B, T]``.
    KL and entropy are aggregated like the objective's token terms (``loss_agg_mode``).
    ``global_num_tokens`` / ``global_num_seqs`` are the whole batch's response-token and non-empty
    sequence counts: pass them when computing the loss per micro-batch so the micro-batch losses sum
    to the full-batch loss (with ``rollout_rs``, count the tokens it keeps: :func:`sspo.rollout_correction`).
    Objective hyperparameters go in ``**hyperparameters``.

    Rollout corrections (docs/objectives.md, "Rollout corrections"): ``rollout_log_probs`` are the
    sampler's log-probs; ``rollout_is``/``rollout_is_threshold``/``rollout_is_batch_normalize``/
    ``rollout_rs``/``rollout_rs_threshold`` mean what verl's ``algorithm.rollout_correction`` means by
    them. In decoupled mode (default) the objective is centred on ``old_log_probs`` (the proximal policy)
    and a detached weight ``π_old/π_rollout`` multiplies its terms; ``bypass_mode=True`` centres it on
    ``rollout_log_probs`` instead (``old_log_probs`` is then not used) and only rejection applies.
    ``rollout_is_weights`` takes weights an engine computed (``[B, T]``, or ``[B]`` per sequence).
    """
    objective = get_objective(name)
    _check_hyperparameters(objective, hyperparameters)
    mode = loss_agg_mode or objective.default_agg_mode
    if mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r} is not one of {', '.join(AGG_MODES)}")
    if mode not in objective.agg_modes:
        reason = _LENGTH_REASON.get(name, _LENGTH_REASON[True]).format(mode=mode)
        raise ValueError(f"objective {name!r} {reason}; use {' or '.join(objective.agg_modes)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator={kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
    correction, weights, old_log_probs, response_mask = _rollout_correction(
        log_probs, old_log_probs, response_mask, rollout_log_probs, rollout_is_weights, bypass_mode,
        check_finite=check_finite, rollout_is=rollout_is, rollout_is_threshold=rollout_is_threshold,
        rollout_is_batch_normalize=rollout_is_batch_normalize, rollout_rs=rollout_rs,
        rollout_rs_threshold=rollout_rs_threshold,
    )  # fmt: skip
    batch, metrics = prepare_batch(
        log_probs, old_log_probs, advantages, response_mask,
        log_ratio_clamp=log_ratio_clamp, check_finite=check_finite,
    )  # fmt: skip
    metrics.update(correction)
    norms = {"global_num_tokens": global_num_tokens, "global_num_seqs": global_num_seqs}

    if weights is not None and objective.own_rollout_weight:
        weight, level = weights
        batch = dataclasses.replace(batch, rollout_log_weight=rollout_log_weight(weight, batch.mask, level))
    terms = objective.terms(batch, **hyperparameters)
    if weights is not None and not objective.own_rollout_weight:
        weight = weights[0]
        terms.values = terms.values * (weight if terms.values.dim() == 2 else batch.seq_mean(weight))
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


def _rollout_correction(
    log_probs: Tensor,
    old_log_probs: Tensor,
    response_mask: Tensor,
    rollout_log_probs: Tensor | None,
    rollout_is_weights: Tensor | None,
    bypass_mode: bool,
    *,
    check_finite: bool,
    **options,
) -> tuple[dict[str, Tensor], tuple[Tensor, str] | None, Tensor, Tensor]:
    """``(metrics, (weights [B, T], level) or None, the objective's old log-probs, the response mask)``
    after the rollout correction asked for (none: the inputs unchanged)."""
    asked = options["rollout_is"] is not None or options["rollout_rs"] is not None
    _check_tensor("log_probs", log_probs)
    if not isinstance(bypass_mode, bool):
        raise ValueError(f"bypass_mode must be True or False, got {bypass_mode!r}")
    if rollout_is_weights is not None:
        if asked or rollout_log_probs is not None:
            raise ValueError("rollout_is_weights are weights already computed: pass them, or rollout_log_probs "
                             "with rollout_is/rollout_rs, not both")  # fmt: skip
        metrics, weights = _given_weights(rollout_is_weights, log_probs, response_mask, check_finite)
        return metrics, weights, old_log_probs, response_mask
    if rollout_log_probs is None:
        if asked or bypass_mode:
            raise ValueError("rollout_is, rollout_rs and bypass_mode need rollout_log_probs (the sampler's log-probs)")
        return {}, None, old_log_probs, response_mask
    if not isinstance(rollout_log_probs, Tensor) or rollout_log_probs.shape != log_probs.shape:
        shape = getattr(rollout_log_probs, "shape", type(rollout_log_probs).__name__)
        raise ValueError(f"rollout_log_probs must have the shape of log_probs {tuple(log_probs.shape)}, got {shape}")
    mask = as_bool_mask(response_mask, log_probs.shape)
    centre = log_probs if bypass_mode else old_log_probs
    correction = rollout_correction(centre, rollout_log_probs, mask, check_finite=check_finite,
                                    centre_name="log_probs" if bypass_mode else "old_log_probs", **options)
    weights = None
    if correction.weights is not None and not bypass_mode:  # bypass: the ratio to the sampler is the objective's
        weights = (correction.weights, correction.level)
    return correction.metrics, weights, rollout_log_probs if bypass_mode else old_log_probs, correction.mask


def _given_weights(weights: Tensor, log_probs: Tensor, response_mask: Tensor, check_finite: bool):
    """``(metrics, (weights [B, T], level))`` from weights an engine computed: ``[B, T]`` per token,
    ``[B]`` or ``[B, 1]`` per sequence."""
    if not isinstance(weights, Tensor) or not weights.is_floating_point():
        raise ValueError(f"rollout_is_weights must be a floating-point tensor, got {type(weights).__name__}")
    shape = log_probs.shape
    if weights.dim() == 2 and weights.shape[1] == 1 and shape[1] != 1:
        weights = weights[:, 0]
    if weights.shape not in (shape, shape[:1]):
        raise ValueError(f"rollout_is_weights must be [B, T]={tuple(shape)} or [B]={tuple(shape[:1])}, got {tuple(weights.shape)}")
    level = "token" if weights.dim() == 2 else "sequence"
    mask = as_bool_mask(response_mask, shape)
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    w = weights.detach().to(dtype)
    w = w[:, None].expand(shape) if level == "sequence" else w
    if check_finite and bool(((~torch.isfinite(w) | (w < 0)) & mask).any()):
        raise ValueError("rollout_is_weights must be finite and >= 0 at valid (mask=1) positions")
    w = torch.where(mask, w, torch.zeros((), dtype=dtype, device=w.device))
    return {"rollout_corr/is_mean": masked_mean(w, mask)}, (w, level)
