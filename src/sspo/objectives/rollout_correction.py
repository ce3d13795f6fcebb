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


def _criterion_keeps(option: str, lower, upper, delta: Tensor, lengths: Tensor) -> Tensor:
    """``[B, T]`` bool (``[B, 1]`` for a sequence criterion): tokens (rows) that pass one rejection
    criterion. ``delta`` is 0 at masked positions, where every statistic is then 0 too (no select needed);
    ``lengths``: ``[B]`` valid tokens per row."""
    estimator = option[-2:]
    if option == "token_k1":  # −δ in [log L, log U]
        lo, hi = -math.log(upper), -math.log(lower)
        if lo == -hi:  # L = 1/U: one comparison, |δ| ≤ log U
            return delta.abs() <= hi
        return (delta <= hi).logical_and_(delta >= lo)
    if estimator == "k1":
        stat = -delta
    elif estimator == "k2":
        stat = (0.5 * delta).mul_(delta)
    else:
        stat = torch.expm1(delta).sub_(delta)
    if option.startswith("seq_sum"):
        stat = stat.sum(-1, keepdim=True)
    elif option.startswith("seq_mean"):
        stat = stat.sum(-1, keepdim=True) / lengths[:, None].clamp(min=1)
    elif option.startswith("seq_max"):  # k2, k3 >= 0: the row's max over its valid tokens, 0 for an empty row
        stat = stat.amax(-1, keepdim=True)
    if estimator == "k1":
        return (stat >= math.log(lower)) & (stat <= math.log(upper))
    return stat <= upper


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
    # delta is this function's own buffer, updated in place and at last turned into the weights: each
    # [B, T] temporary costs a pass over memory (and, on CPU, page faults)
    delta = log_probs.detach().to(dtype) - rollout_log_probs.detach().to(dtype)
    delta = torch.where(mask, delta, zero, out=delta)
    # a sum is finite only if every term is (one cheap pass); name the culprit only on failure
    if check_finite and not bool(torch.isfinite(delta.sum())):
        for name, t in (("rollout_log_probs", rollout_log_probs), (centre_name, log_probs)):
            if bool(((~torch.isfinite(t)) & mask).any()):
                raise ValueError(f"{name} has non-finite value(s) at valid (mask=1) positions; "
                                 "pass check_finite=False to skip this check")  # fmt: skip
    delta = delta.clamp_(-SAFETY_BOUND, SAFETY_BOUND)
    # [B] n_i where needed; every metric below is a mean over the n valid tokens. Bool counts: a .sum()
    # copies the [B, T] flags to int64 first, count_nonzero does not, int32 halves the copy
    lengths = mask.sum(-1, dtype=torch.int32) if rollout_is == "sequence" or criteria else None
    n = torch.count_nonzero(mask) if lengths is None else lengths.sum()
    count = n.clamp(min=1).to(dtype)
    metrics = {"rollout_corr/kl": -delta.sum() / count}  # delta is 0 where masked

    keep = mask  # the caller's: never updated in place
    for i, (option, lo, hi) in enumerate(criteria):
        # a new tensor (a row criterion's [B, 1] materialised: a broadcast & of bools is many times slower)
        passed = _criterion_keeps(option, lo, hi, delta, lengths).expand_as(mask).contiguous()
        keep = passed.logical_and_(mask) if i == 0 else keep.logical_and_(passed)

    weights = None
    if rollout_is is not None:  # the weight of each unit: a token ([B, T]) or a row ([B], spread at the end)
        if rollout_is == "token":  # delta is 0 where masked, its exp 1: zeroed
            raw, valid, size = torch.where(mask, delta.exp_(), zero, out=delta), mask, None
        else:  # delta's row sums are its masked sums
            raw = torch.exp(delta.sum(-1).clamp(-SAFETY_BOUND, SAFETY_BOUND))
            valid, size = lengths > 0, lengths

        def tokens(flags: Tensor) -> Tensor:  # valid tokens of the units where flags holds
            return torch.count_nonzero(flags) if size is None else (size * flags).sum()

        if lower is None:
            metrics["rollout_corr/is_truncated_frac"] = tokens(raw > upper) / count  # raw: 0 where masked
            w = raw.clamp_(max=upper)
        else:
            inside = (raw >= lower).logical_and_(raw <= upper)
            metrics["rollout_corr/is_masked_frac"] = tokens(valid & ~inside) / count
            w = torch.where(inside, raw, zero, out=raw)
        if rollout_is_batch_normalize:  # w / mean where mean > 1e-8 (w / 1 is w)
            mean = masked_mean(w, valid)
            w = w.div_(torch.where(mean > 1e-8, mean, 1.0))
        weights = w if size is None else torch.where(mask, w[:, None], zero, out=delta)
        metrics.update({  # weights are >= 0 and 0 where masked
            "rollout_corr/is_mean": weights.sum() / count,
            "rollout_corr/is_min": masked_min(w, valid, any_valid=n > 0),
            "rollout_corr/is_max": weights.amax() if weights.numel() else zero,
        })  # fmt: skip

    if criteria:
        kept = keep.sum(-1, dtype=torch.int32)  # kept < lengths: the row lost a token
        metrics["rollout_corr/rs_masked_frac"] = 1.0 - kept.sum() / count
        metrics["rollout_corr/rs_seq_masked_frac"] = fraction(kept < lengths, lengths > 0)
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
