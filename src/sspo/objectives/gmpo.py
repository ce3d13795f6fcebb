"""GMPO (Zhao et al. 2025): geometric mean of token ratios clipped in log space.

``ℓ_t = min(Δ, clamp(Δ, −c_low, c_high))`` if ``A_i > 0``, ``max(Δ, clamp(Δ, −c_low, c_high))`` if ``A_i < 0``;
``J = 1/G' Σ_i A_i·exp(1/n_i Σ_t m·ℓ_t)``.
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, clip_metrics


def gmpo_terms(batch: PolicyBatch, *, clip_low: float = 0.4, clip_high: float = 0.4) -> Terms:
    """Sequence terms ``A_i·exp(mean_t ℓ_t)``, pessimistic by the sign of ``A_i``."""
    delta = batch.log_ratio
    adv = batch.seq_adv[:, None]
    clamped = delta.clamp(-clip_low, clip_high)
    ell = torch.where(adv > 0, torch.minimum(delta, clamped), torch.where(adv < 0, torch.maximum(delta, clamped), delta))
    weight = torch.exp(batch.seq_mean(ell))
    low = (delta < -clip_low) & (adv < 0)
    high = (delta > clip_high) & (adv > 0)
    kept = (~(low | high)).to(weight.dtype)
    return Terms(batch.seq_adv * weight, weight, kept, clip_metrics(low, high, batch.mask))
