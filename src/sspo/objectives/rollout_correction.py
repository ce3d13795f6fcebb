"""Rollout corrections: importance weights and rejection masks for samples a *different* policy drew.

With ``π`` the policy the objective's ratio is centred on and ``μ`` the sampler (``rollout_log_probs``),
``δ = log π − log μ`` per token (clamped to ±20 before ``exp``). The names and semantics are verl's
``algorithm.rollout_correction`` (docs/objectives.md, "Rollout corrections"):

- ``rollout_is="token"``: ``ρ_t = exp(δ_t)``; ``"sequence"``: ``ρ_i = exp(Σ_t m·δ_t)`` on every token of
  the row. ``rollout_is_threshold``: a number ``U`` truncates, ``ρ ← min(ρ, U)`` (TIS); a string
  ``"L_U"`` zeroes every weight outside ``[L, U]`` (IcePop). ``rollout_is_batch_normalize`` divides by
  the batch mean of the weights (per token or per sequence). The weight is detached.
- ``rollout_rs``: comma-separated rejection criteria, all of which must pass; a rejected token leaves
  the loss (and its counts). ``token_k1``/``seq_sum_k1``/``seq_mean_k1`` bound ``−δ`` (token, sum,
  mean) to ``[log L, log U]`` (threshold ``"L_U"``, or ``U`` for ``L = 1/U``); ``*_k2`` bound ``δ²/2`` and
  ``*_k3`` bound ``exp(δ) − 1 − δ`` from above, per token (``token_``), summed (``seq_sum_``),
  averaged (``seq_mean_``) or maximal (``seq_max_``) over the row. ``rollout_rs_threshold``: one
  threshold for all criteria or one per criterion, comma-separated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .core import fraction, masked_mean, masked_min, masked_sum

ROLLOUT_IS = ("token", "sequence")
ROLLOUT_RS = (
    "token_k1", "token_k2", "token_k3",
    "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
    "seq_mean_k1", "seq_mean_k2", "seq_mean_k3",
    "seq_max_k2", "seq_max_k3",
)  # fmt: skip
SAFETY_BOUND = 20.0
"""``|δ|`` (and ``|Σδ|`` for sequence weights) is clamped to this before ``exp``, as in verl."""


@dataclass
class RolloutCorrection:
    """What :func:`rollout_correction` returns."""

    weights: Tensor | None
    """``[B, T]`` detached weights, 0 where the response mask is 0; None without ``rollout_is``. Rejected
    tokens keep theirs (they are out of :attr:`mask`)."""
    mask: Tensor
    """``[B, T]`` bool: the response mask with rejected tokens removed."""
    level: str | None
    """``rollout_is`` (``"token"``, ``"sequence"`` or None)."""
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} bounds must be finite and > 0, got {text!r}")
    return value


def parse_is_threshold(spec) -> tuple[float | None, float]:
    """``(lower, upper)`` of ``rollout_is_threshold``: a number ``U`` is ``(None, U)`` (truncation), a
    string ``"L_U"`` is ``(L, U)`` (IcePop's two-sided mask)."""
    name = "rollout_is_threshold"
    if isinstance(spec, bool) or not isinstance(spec, int | float | str):
        raise ValueError(f"{name} must be a number or a 'lower_upper' string, got {spec!r}")
    text = str(spec).strip()
    if "_" in text:
        lo, hi = (_number(name, part) for part in text.split("_", 1))
        if lo > hi:
            raise ValueError(f"{name}={spec!r}: the lower bound is above the upper one")
        return lo, hi
    return None, _number(name, text)


def parse_rs(rollout_rs: str, threshold) -> list[tuple[str, float | None, float]]:
    """``[(criterion, lower, upper)]`` for ``rollout_rs`` and ``rollout_rs_threshold`` (bounds as given,
    not yet in log space; ``lower`` only for ``*_k1``)."""
    if not isinstance(rollout_rs, str) or not rollout_rs.strip():
        raise ValueError(f"rollout_rs must be a comma-separated string of {', '.join(ROLLOUT_RS)}, got {rollout_rs!r}")
    options = list(dict.fromkeys(o.strip() for o in rollout_rs.split(",") if o.strip()))
    for option in options:
        if option not in ROLLOUT_RS:
            raise ValueError(f"rollout_rs: unknown criterion {option!r}; valid: {', '.join(ROLLOUT_RS)}")
    if threshold is None:
        raise ValueError("rollout_rs needs rollout_rs_threshold (one value, or one per criterion)")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | str):
        raise ValueError(f"rollout_rs_threshold must be a number or a string, got {threshold!r}")
    specs = [s.strip() for s in str(threshold).split(",") if s.strip()]
    if len(specs) not in (1, len(options)):
        raise ValueError(
            f"rollout_rs_threshold has {len(specs)} values for {len(options)} criteria; give one, or one per criterion"
        )
    specs = specs * len(options) if len(specs) == 1 else specs
    parsed = []
    for option, spec in zip(options, specs, strict=True):
        name = f"rollout_rs_threshold (for {option})"
        if option.endswith("k1"):
            if "_" in spec:
                lo, hi = (_number(name, part) for part in spec.split("_", 1))
            else:
                hi = _number(name, spec)
                lo = 1.0 / hi
            if lo > hi:
                raise ValueError(f"{name}={spec!r}: the lower bound is above the upper one")
            parsed.append((option, lo, hi))
        else:
            if "_" in spec:
                raise ValueError(f"{name}={spec!r}: a k2/k3 criterion takes one upper bound")
            parsed.append((option, None, _number(name, spec)))
    return parsed


def _criterion_keeps(option: str, lower, upper, delta: Tensor, mask: Tensor) -> Tensor:
    """``[B, T]`` bool: tokens that pass one rejection criterion (a sequence criterion passes or fails rows).
    ``delta`` is 0 at masked positions, where every statistic is then 0 too (no select needed)."""
    estimator = option[-2:]
    if option == "token_k1":  # −δ in [log L, log U]
        return (delta <= -math.log(lower)) & (delta >= -math.log(upper))
    if estimator == "k1":
        stat = -delta
    elif estimator == "k2":
        stat = 0.5 * delta * delta
    else:
        stat = torch.expm1(delta) - delta
    if option.startswith("seq_sum"):
        stat = stat.sum(-1, keepdim=True)
    elif option.startswith("seq_mean"):
        stat = stat.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    elif option.startswith("seq_max"):  # k2, k3 >= 0: the row's max over its valid tokens, 0 for an empty row
        stat = stat.amax(-1, keepdim=True)
    if estimator == "k1":
        keep = (stat >= math.log(lower)) & (stat <= math.log(upper))
    else:
        keep = stat <= upper
    return keep.expand_as(mask)


def rollout_correction(
    log_probs: Tensor,
    rollout_log_probs: Tensor,
    mask: Tensor,
    *,
    rollout_is: str | None = None,
    rollout_is_threshold=2.0,
    rollout_is_batch_normalize: bool = False,
    rollout_rs: str | None = None,
    rollout_rs_threshold=None,
    check_finite: bool = False,
    centre_name: str = "log_probs",
) -> RolloutCorrection:
    """Weights ``ρ`` and the rejection mask for ``δ = log_probs − rollout_log_probs`` (module docstring).

    ``log_probs`` is the policy the objective's ratio is centred on: the proximal (``old``) log-probs in
    decoupled mode, the current ones (detached) in bypass mode. Pure: nothing here keeps state.
    ``check_finite``: non-finite inputs at valid positions raise ``ValueError`` naming the tensor
    (``centre_name`` is how the caller calls ``log_probs``).
    """
    if rollout_is is not None and rollout_is not in ROLLOUT_IS:
        raise ValueError(f"rollout_is={rollout_is!r} is not one of None, {', '.join(map(repr, ROLLOUT_IS))}")
    if not isinstance(rollout_is_batch_normalize, bool):
        raise ValueError(f"rollout_is_batch_normalize must be True or False, got {rollout_is_batch_normalize!r}")
    lower, upper = parse_is_threshold(rollout_is_threshold)
    criteria = parse_rs(rollout_rs, rollout_rs_threshold) if rollout_rs is not None else []

    mask = mask.bool()
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=log_probs.device)
    delta = torch.where(mask, log_probs.detach().to(dtype) - rollout_log_probs.detach().to(dtype), zero)
    if check_finite and not bool(torch.isfinite(delta).all()):  # one pass; name the culprit only on failure
        for name, t in (("rollout_log_probs", rollout_log_probs), (centre_name, log_probs)):
            if bool(((~torch.isfinite(t)) & mask).any()):
                raise ValueError(f"{name} has non-finite value(s) at valid (mask=1) positions; "
                                 "pass check_finite=False to skip this check")  # fmt: skip
    delta = delta.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    count = mask.sum().clamp(min=1).to(dtype)  # every metric below is a mean over the valid tokens
    metrics = {"rollout_corr/kl": -delta.sum() / count}  # delta is 0 where masked

    weights = None
    if rollout_is is not None:
        if rollout_is == "token":
            raw = torch.exp(delta)
        else:
            raw = torch.exp(masked_sum(delta, mask, dim=-1).clamp(-SAFETY_BOUND, SAFETY_BOUND))[:, None].expand_as(delta)
        raw = torch.where(mask, raw, zero)
        if lower is None:
            weights = raw.clamp(max=upper)
            metrics["rollout_corr/is_truncated_frac"] = (raw > upper).sum() / count  # raw is 0 where masked
        else:
            inside = (raw >= lower) & (raw <= upper)
            weights = torch.where(inside, raw, zero)
            metrics["rollout_corr/is_masked_frac"] = (mask & ~inside).sum() / count
        if rollout_is_batch_normalize:
            if rollout_is == "token":
                mean = masked_mean(weights, mask)
            else:
                seq_valid = mask.any(-1)
                mean = masked_mean(weights.amax(-1), seq_valid)
            weights = torch.where(mean > 1e-8, weights / mean.clamp(min=1e-8), weights)
        weights = weights.detach()
        metrics.update({  # weights are >= 0 and 0 where masked
            "rollout_corr/is_mean": weights.sum() / count,
            "rollout_corr/is_min": masked_min(weights, mask),
            "rollout_corr/is_max": weights.amax() if weights.numel() else zero,
        })  # fmt: skip

    keep = mask
    for option, lo, hi in criteria:
        keep = keep & _criterion_keeps(option, lo, hi, delta, mask)
    if criteria:
        valid_rows = mask.any(-1)
        metrics["rollout_corr/rs_masked_frac"] = 1.0 - keep.sum() / count
        metrics["rollout_corr/rs_seq_masked_frac"] = fraction((mask & ~keep).any(-1), valid_rows)
    return RolloutCorrection(weights, keep, rollout_is, metrics)


def rollout_log_weight(weights: Tensor, mask: Tensor, level: str) -> Tensor:
    """``[B]`` log of the correction's weight on a whole sequence, for objectives that fold it into their
    own sequence weight (VESPO, as TRL does): ``Σ_t m·log ρ_t`` (token weights) or ``log ρ_i`` (sequence
    weights), each log clamped to ``[log 1e-8, 20]`` so a zeroed weight stays finite."""
    logs = torch.log(weights.clamp(min=1e-30)).clamp(math.log(1e-8), SAFETY_BOUND)
    if level == "sequence":
        row = torch.where(mask, logs, torch.full_like(logs, float("-inf"))).amax(-1)
        return torch.where(mask.any(-1), row, torch.zeros_like(row))
    return masked_sum(logs, mask, dim=-1)
