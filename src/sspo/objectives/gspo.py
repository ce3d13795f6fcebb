"""GSPO (Zheng et al. 2025): clipping of the length-normalised sequence ratio.

``s_i = exp(1/n_i Σ_t m·Δ)``,  ``J = 1/G' Σ_i min(s_i·A_i, clip(s_i, 1−ε_low, 1+ε_high)·A_i)``.

GSPO-token: ``s_i,t = sg[s_i]·exp(logp − sg[logp])`` with token advantages, aggregated
``seq-mean-token-mean``; equal to GSPO in value and gradient when advantages are per sequence.
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, clip_metrics


def _clipped(weight, adv, eps_low: float, eps_high: float):
    return torch.minimum(weight * adv, weight.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)


def gspo_terms(batch: PolicyBatch, *, eps_low: float = 3e-4, eps_high: float = 4e-4) -> Terms:
    """Sequence terms ``min(s_i·A_i, clip(s_i)·A_i)``; clip fractions count sequences."""
    s = torch.exp(batch.seq_mean(batch.log_ratio))
    adv = batch.seq_adv
    low = (s < 1.0 - eps_low) & (adv < 0)
    high = (s > 1.0 + eps_high) & (adv > 0)
    kept = (~(low | high)).to(s.dtype)[:, None]
    return Terms(_clipped(s, adv, eps_low, eps_high), s, kept, clip_metrics(low, high, batch.seq_valid))


def gspo_token_terms(batch: PolicyBatch, *, eps_low: float = 3e-4, eps_high: float = 4e-4) -> Terms:
    """Token terms ``min(s_i,t·A_i,t, clip(s_i,t)·A_i,t)`` with ``s_i,t = sg[s_i]·exp(logp − sg[logp])``."""
    log_s = batch.seq_mean(batch.log_ratio).detach()
    s_tok = torch.exp(log_s[:, None] + batch.log_probs - batch.log_probs.detach())
    adv = batch.token_adv
    s = torch.exp(log_s)
    low = (s[:, None] < 1.0 - eps_low) & (adv < 0)
    high = (s[:, None] > 1.0 + eps_high) & (adv > 0)
    kept = (~(low | high)).to(s.dtype)
    return Terms(_clipped(s_tok, adv, eps_low, eps_high), s, kept, clip_metrics(low, high, batch.mask))
