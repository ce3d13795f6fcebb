"""Shared pieces of every objective: input checks, masking, log-ratio clamping, aggregation, metrics.

Notation follows docs/objectives.md: ``m[i,t]`` response mask, ``n_i = Σ_t m[i,t]``, ``Δ = logp − old`` (clamped),
``G'`` = number of sequences with ``n_i > 0``. Every objective returns *terms of J*; the loss is ``−J``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
SEQUENCE_AGG_MODES = ("seq-mean-token-mean",)


@dataclass
class LossOutput:
    """What :func:`sspo.policy_loss` returns."""

    loss: Tensor
    """Scalar ``−J (+ kl_coef·KL − entropy_coef·H)``, ready for ``.backward()``."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """Detached scalar tensors (no host sync was made to compute them)."""


@dataclass(frozen=True)
class PolicyBatch:
    """Validated, masked inputs shared by every objective (all ``[B, T]`` unless noted).

    Masked positions hold 0 in every tensor, whatever the caller had there (NaN, ±inf).
    """

    log_probs: Tensor  # logp, with grad, zero where masked
    old_log_probs: Tensor  # old, detached, zero where masked
    log_ratio: Tensor  # Δ = clamp(logp − old, ±c), zero where masked
    mask: Tensor  # bool
    token_adv: Tensor  # A per token (detached), zero where masked
    seq_adv: Tensor  # [B] A per sequence (mean of token advantages over valid tokens)
    lengths: Tensor  # [B] n_i, in the compute dtype
    seq_valid: Tensor  # [B] bool, n_i > 0
    rollout_log_weight: Tensor | None = None
    """[B] log of the rollout correction's weight, for objectives that fold it into their own sequence
    weight (VESPO); None when no correction is asked for."""

    def seq_mean(self, values: Tensor) -> Tensor:
        """``1/n_i Σ_t m·values`` per sequence ([B]); 0 for empty sequences."""
        return masked_sum(values, self.mask, dim=-1) / self.lengths.clamp(min=1)


@dataclass
class Terms:
    """An objective's contribution to J before aggregation."""

    values: Tensor
    """``[B, T]`` token terms or ``[B]`` sequence terms of J."""
    seq_weight: Tensor
    """``[B]`` the sequence importance weight used (or the geometric-mean ratio for token objectives)."""
    kept: Tensor
    """``[B, T]`` (or ``[B, 1]``) detached share of the plain policy-gradient signal each token keeps:
    1/0 (clip not binding / binding) for clipping objectives, the soft weight for gated ones."""
    metrics: dict[str, Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- masked reductions
def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ m·values`` selecting with ``torch.where`` so non-finite masked values never leak."""
    selected = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 when the mask is empty."""
    count = mask.sum().clamp(min=1)
    return masked_sum(values, mask) / count


def masked_min(values: Tensor, mask: Tensor, any_valid: Tensor | None = None) -> Tensor:
    """Minimum over ``mask``; 0 when the mask is empty (``any_valid``: ``mask.any()``, when known)."""
    big = torch.full((), float("inf"), dtype=values.dtype, device=values.device)
    out = torch.where(mask, values, big).amin()
    return torch.where(mask.any() if any_valid is None else any_valid, out, torch.zeros_like(out))


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Maximum over ``mask``; 0 when the mask is empty."""
    small = torch.full((), float("-inf"), dtype=values.dtype, device=values.device)
    out = torch.where(mask, values, small).amax()
    return torch.where(mask.any(), out, torch.zeros_like(out))


def masked_stats(prefix: str, values: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``{prefix}/mean``, ``/min``, ``/max`` of detached ``values`` over ``mask``."""
    v = values.detach()
    return {
        f"{prefix}/mean": masked_mean(v, mask),
        f"{prefix}/min": masked_min(v, mask),
        f"{prefix}/max": masked_max(v, mask),
    }


def select(cond: Tensor, if_true: float, if_false: float, like: Tensor) -> Tensor:
    """``torch.where`` between two Python numbers, in ``like``'s dtype (no float32 round trip)."""
    a = torch.tensor(if_true, dtype=like.dtype, device=like.device)
    return torch.where(cond, a, torch.tensor(if_false, dtype=like.dtype, device=like.device))


def share(count: Tensor, total: Tensor) -> Tensor:
    """``count / max(total, 1)`` in float32: a fraction from counts already taken."""
    return (count / total.clamp(min=1)).to(torch.float32)


def fraction(flags: Tensor, mask: Tensor) -> Tensor:
    """Fraction of ``mask`` positions where ``flags`` holds (float32; 0 when the mask is empty). Counts
    booleans directly: no float copy of the ``[B, T]`` flags."""
    return share((flags & mask).sum(), mask.sum())


# ----------------------------------------------------------------------------- aggregation
def _normaliser(given, local: Tensor) -> Tensor:
    if given is None:
        return local.clamp(min=1)
    return torch.as_tensor(given, dtype=local.dtype, device=local.device).clamp(min=1)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    global_num_tokens=None,
    global_num_seqs=None,
    max_response_length: int | None = None,
) -> Tensor:
    """Reduce token terms ``values[B, T]`` to a scalar (docs/objectives.md, "Aggregation").

    - ``token-mean``: ``Σ_{i,t} m·v / N`` with ``N`` = all response tokens of the batch;
    - ``seq-mean-token-mean``: ``1/G' Σ_i 1/n_i Σ_t m·v``;
    - ``seq-mean-token-sum``: ``1/G' Σ_i Σ_t m·v``;
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): ``1/G' Σ_i Σ_t m·v / L`` with constant ``L``
      (``max_response_length``, default ``T``).

    ``global_num_tokens`` / ``global_num_seqs`` replace the local ``N`` / ``G'`` so that losses of
    micro-batches sum to the loss of the whole batch.
    """
    mask = mask.bool()
    lengths = mask.sum(-1)
    if mode == "token-mean":
        return masked_sum(values, mask) / _normaliser(global_num_tokens, lengths.sum().to(values.dtype))
    num_seqs = _normaliser(global_num_seqs, (lengths > 0).sum().to(values.dtype))
    per_seq = masked_sum(values, mask, dim=-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / lengths.clamp(min=1).to(values.dtype)
    elif mode == "seq-mean-token-sum-norm":
        per_seq = per_seq / float(max_response_length or values.shape[-1])
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"loss_agg_mode={mode!r} is not one of {', '.join(AGG_MODES)}")
    return per_seq.sum() / num_seqs


def aggregate_sequences(values: Tensor, seq_valid: Tensor, *, global_num_seqs=None) -> Tensor:
    """``1/G' Σ_i v_i`` over non-empty sequences (sequence-level objectives)."""
    num_seqs = _normaliser(global_num_seqs, seq_valid.sum().to(values.dtype))
    return masked_sum(values, seq_valid) / num_seqs


# ----------------------------------------------------------------------------- input preparation
def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}"


def _check_tensor(name: str, value, *, floating: bool = True) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {_describe(value)}")
    return value


def _check_finite(name: str, value: Tensor, where: Tensor) -> None:
    bad = (~torch.isfinite(value)) & where
    if bool(bad.any()):
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s) at valid (mask=1) positions; "
            "pass check_finite=False to skip this check"
        )


def as_bool_mask(response_mask: Tensor, shape) -> Tensor:
    """``response_mask`` as a bool tensor of ``shape``; it must be boolean or hold only 0/1."""
    _check_tensor("response_mask", response_mask, floating=False)
    if response_mask.shape != shape:
        raise ValueError(f"response_mask must have the shape of log_probs {tuple(shape)}, got {_describe(response_mask)}")
    if response_mask.dtype == torch.bool:
        return response_mask
    if response_mask.is_complex() or bool(((response_mask != 0) & (response_mask != 1)).any()):
        raise ValueError(f"response_mask must be boolean or hold only 0/1, got {_describe(response_mask)}")
    return response_mask != 0


def prepare_batch(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    log_ratio_clamp: float = 20.0,
    check_finite: bool = True,
) -> tuple[PolicyBatch, dict[str, Tensor]]:
    """Validate the inputs, mask them with ``torch.where`` and compute the clamped log-ratio.

    Math runs in ``promote_types(log_probs.dtype, float32)``: float64 stays float64, half
    precision is upcast. Returns the batch and the metrics ``log_ratio/clamp_frac`` and ``ppo_kl``.
    """
    _check_tensor("log_probs", log_probs)
    _check_tensor("old_log_probs", old_log_probs)
    _check_tensor("advantages", advantages)
    _check_tensor("response_mask", response_mask, floating=False)
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be [B, T], got {_describe(log_probs)}")
    shape = log_probs.shape
    for name, t in (("old_log_probs", old_log_probs), ("response_mask", response_mask)):
        if t.shape != shape:
            raise ValueError(f"{name} must have the shape of log_probs {tuple(shape)}, got {_describe(t)}")
    if advantages.shape not in (shape[:1], shape):
        raise ValueError(
            f"advantages must be [B]={tuple(shape[:1])} or [B, T]={tuple(shape)}, got {_describe(advantages)}"
        )
    if not (log_ratio_clamp > 0):
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")
    mask = as_bool_mask(response_mask, shape)
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    if check_finite:
        _check_finite("log_probs", log_probs, mask)
        _check_finite("old_log_probs", old_log_probs, mask)
        seq_mask = mask if advantages.dim() == 2 else mask.any(-1)
        _check_finite("advantages", advantages, seq_mask)

    zero = torch.zeros((), dtype=dtype, device=log_probs.device)
    logp = torch.where(mask, log_probs.to(dtype), zero)
    old = torch.where(mask, old_log_probs.detach().to(dtype), zero)
    raw = logp - old
    log_ratio = torch.where(mask, raw.clamp(-log_ratio_clamp, log_ratio_clamp), zero)

    lengths = mask.sum(-1).to(dtype)
    seq_valid = lengths > 0
    adv = advantages.detach().to(dtype)
    if adv.dim() == 1:
        seq_adv = torch.where(seq_valid, adv, zero)
        token_adv = torch.where(mask, seq_adv[:, None].expand_as(logp), zero)
    else:
        token_adv = torch.where(mask, adv, zero)
        seq_adv = token_adv.sum(-1) / lengths.clamp(min=1)
    batch = PolicyBatch(logp, old, log_ratio, mask, token_adv, seq_adv, lengths, seq_valid)
    metrics = {
        "log_ratio/clamp_frac": fraction(raw.detach().abs() > log_ratio_clamp, mask),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask),
    }
    return batch, metrics


# ----------------------------------------------------------------------------- metrics helpers
def geometric_mean_ratio(batch: PolicyBatch) -> Tensor:
    """``exp(1/n_i Σ_t m·Δ)`` per sequence (GSPO's ratio; the sequence weight token objectives report)."""
    return torch.exp(batch.seq_mean(batch.log_ratio))


def sequence_weight_metrics(seq_weight: Tensor, seq_valid: Tensor) -> dict[str, Tensor]:
    """Mean/min/max/var of the sequence weights and their effective sample size ``(Σs)²/(G'·Σs²)``."""
    s = seq_weight.detach()
    metrics = masked_stats("seq_weight", s, seq_valid)
    mean = metrics["seq_weight/mean"]
    count = seq_valid.sum().clamp(min=1)
    metrics["seq_weight/var"] = masked_sum((s - mean) ** 2, seq_valid) / count
    total = masked_sum(s, seq_valid)
    sq = masked_sum(s * s, seq_valid)
    metrics["seq_weight/ess"] = torch.where(sq > 0, total * total / (count * sq).clamp(min=1e-30), sq)
    return metrics


def clip_metrics(low: Tensor, high: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``pg_clipfrac_low``/``_high`` (clip binding from below/above) and their union ``pg_clipfrac``."""
    return {
        "pg_clipfrac": fraction(low | high, mask),
        "pg_clipfrac_low": fraction(low, mask),
        "pg_clipfrac_high": fraction(high, mask),
    }


def effective_ratio(kept: Tensor, mask: Tensor) -> Tensor:
    """``update/effective_ratio``: mean over valid tokens of the share of the plain policy-gradient
    signal each token keeps (``kept`` broadcasts to ``mask``)."""
    return masked_mean(kept.detach().expand(mask.shape), mask)


def truncated_share(log_ratio: Tensor, cap: float) -> Tensor:
    """``min(r, cap)/r = exp(min(0, log cap − Δ))``: the share of ``r·A·∇logp`` that a detached weight
    ``sg[min(r, cap)]`` on ``A·∇logp`` keeps (CISPO, DPPO)."""
    return torch.exp((math.log(cap) - log_ratio.detach()).clamp(max=0.0))


def soft_gate_metrics(weight: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean soft-gate weight over valid tokens and the fraction of tokens attenuated below 0.5."""
    w = weight.detach()
    return {"gate/weight_mean": masked_mean(w, mask), "gate/attenuated_frac": fraction(w < 0.5, mask)}
