"""CISPO (MiniMax-M1, 2025): a capped, detached importance weight on a REINFORCE term.

``J = 1/Σ_i n_i · Σ_i,t m·sg[min(r, r_max)]·A·logp`` — every token keeps its gradient.
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, clip_metrics, geometric_mean_ratio, truncated_share


def cispo_terms(batch: PolicyBatch, *, ratio_max: float = 5.0) -> Terms:
    """Token terms ``sg[min(r, r_max)]·A·logp``; ``pg_clipfrac_high`` counts capped tokens, which keep
    ``min(r, r_max)/r = exp(min(0, log r_max − Δ))`` of the plain policy gradient ``r·A·∇logp``."""
    delta = batch.log_ratio.detach()
    ratio = torch.exp(delta)
    values = ratio.clamp(max=ratio_max) * batch.token_adv * batch.log_probs
    high = ratio > ratio_max
    kept = truncated_share(delta, ratio_max)
    return Terms(values, geometric_mean_ratio(batch), kept, clip_metrics(torch.zeros_like(high), high, batch.mask))
