"""DPPO (Qi et al., arXiv 2602.04879): a trust region on the probability itself instead of the ratio.

A token whose probability moved past the divergence threshold, in the direction its advantage pushes,
is masked (``M = 0``); the others keep the ratio surrogate, its ratio truncated at ``c``:

``J = 1/N Σ_i,t m·M[i,t]·min(r, c)·A``, differentiated as ``M·min(r, c)·A·∇logp`` (the truncation is
detached), with ``p = exp(logp)``, ``q = exp(old)``:

- DPPO-Binary-TV: ``M = (p − q ≤ δ_high)`` if ``A > 0``, ``(p − q ≥ −δ_low)`` otherwise;
- DPPO-Binary-KL: with ``D = q·log(q/p) + (1 − q)·log((1 − q + ε)/(1 − p + ε))`` (``ε = 1e-8``),
  ``M = (D ≤ δ_high) ∨ (p ≤ q)`` if ``A > 0``, ``(D ≤ δ_low) ∨ (p ≥ q)`` otherwise.

The value is the paper's surrogate ``M·r·A`` (for ``r ≤ c``); verl writes the same gradient as
``sg[min(r, c)]·A·logp``, whose value differs. Thresholds carry verl's names (``clip_ratio`` as δ,
``clip_ratio_low``/``_high`` overriding it per side, ``clip_ratio_c`` as ``c``); the defaults are the
DPPO authors' (δ_TV = 0.15, δ_KL = 0.05, ``c = 1e4``: no truncation in practice).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import PolicyBatch, Terms, clip_metrics, fraction, geometric_mean_ratio, truncated_share

BINARY_KL_EPS = 1e-8
"""verl's smoothing inside the binary KL's second logarithm."""


def _thresholds(clip_ratio: float, clip_ratio_low: float | None, clip_ratio_high: float | None):
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    return low, high


def _dppo_terms(batch: PolicyBatch, up_ok: Tensor, down_ok: Tensor, clip_ratio_c: float) -> Terms:
    """Shared by both divergences: ``up_ok``/``down_ok`` say whether a token may still move in the direction
    a positive/negative advantage pushes it. Values ``M·sg[min(r, c)/r]·r·A``: ``M·min(r, c)·A`` in value,
    ``M·min(r, c)·A·∇logp`` in gradient."""
    adv = batch.token_adv
    positive = adv > 0
    valid = torch.where(positive, up_ok, down_ok)
    delta = batch.log_ratio.detach()
    share = truncated_share(delta, clip_ratio_c)  # min(r, c)/r, detached
    zero = torch.zeros((), dtype=adv.dtype, device=adv.device)
    values = torch.where(valid, share * torch.exp(batch.log_ratio) * adv, zero)
    kept = torch.where(valid, share, zero)
    metrics = clip_metrics(~valid & ~positive, ~valid & positive, batch.mask)
    metrics["dppo/truncated_frac"] = fraction(valid & (share < 1), batch.mask)
    return Terms(values, geometric_mean_ratio(batch), kept, metrics)


def dppo_tv_terms(
    batch: PolicyBatch,
    *,
    clip_ratio: float = 0.15,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float = 1e4,
) -> Terms:
    """DPPO-Binary-TV token terms ``M·min(r, c)·A``, ``M`` from ``p − q`` against ``±δ``."""
    low, high = _thresholds(clip_ratio, clip_ratio_low, clip_ratio_high)
    diff = (torch.exp(batch.log_probs) - torch.exp(batch.old_log_probs)).detach()
    return _dppo_terms(batch, diff <= high, diff >= -low, clip_ratio_c)


def dppo_kl_terms(
    batch: PolicyBatch,
    *,
    clip_ratio: float = 0.05,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float = 1e4,
) -> Terms:
    """DPPO-Binary-KL token terms ``M·min(r, c)·A``, ``M`` from the binary KL of ``q`` to ``p``."""
    low, high = _thresholds(clip_ratio, clip_ratio_low, clip_ratio_high)
    logp, old = batch.log_probs.detach(), batch.old_log_probs
    p, q = torch.exp(logp), torch.exp(old)
    kl = q * (old - logp) + (1 - q) * torch.log((1.0 - q + BINARY_KL_EPS) / (1.0 - p + BINARY_KL_EPS))
    return _dppo_terms(batch, (kl <= high) | (p <= q), (kl <= low) | (p >= q), clip_ratio_c)
