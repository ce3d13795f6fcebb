"""GRPO with DAPO's clip-higher (Shao et al. 2024; Yu et al. 2025).

``J = 1/G' Σ_i 1/n_i Σ_t m·min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)``
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, clip_metrics, geometric_mean_ratio


def grpo_terms(batch: PolicyBatch, *, eps_low: float = 0.2, eps_high: float = 0.2) -> Terms:
    """Token terms ``min(r·A, clip(r)·A)``; the clip binds low when ``r < 1−ε_low, A < 0``, high when
    ``r > 1+ε_high, A > 0``, and a token where it binds keeps none of its gradient."""
    ratio = torch.exp(batch.log_ratio)
    adv = batch.token_adv
    values = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)
    low = (ratio < 1.0 - eps_low) & (adv < 0)
    high = (ratio > 1.0 + eps_high) & (adv > 0)
    kept = (~(low | high)).to(ratio.dtype)
    return Terms(values, geometric_mean_ratio(batch), kept, clip_metrics(low, high, batch.mask))
