"""SAPO (Gao et al. 2025): a soft sigmoid gate on each token ratio.

``f(r) = (4/τ)·σ(τ(r − 1))``, ``τ = τ_pos if A > 0 else τ_neg``;  ``J = 1/G' Σ_i 1/n_i Σ_t m·f(r)·A``.
The soft weight on a token's policy gradient is ``r·f'(r) = 4r·σ(1 − σ)`` (1 on-policy).
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, geometric_mean_ratio, select, soft_gate_metrics


def sapo_terms(batch: PolicyBatch, *, tau_pos: float = 1.0, tau_neg: float = 1.05) -> Terms:
    """Token terms ``f_τ(r)·A``."""
    ratio = torch.exp(batch.log_ratio)
    adv = batch.token_adv
    tau = select(adv > 0, tau_pos, tau_neg, ratio)
    gate = torch.sigmoid(tau * (ratio - 1.0))
    values = (4.0 / tau) * gate * adv
    weight = 4.0 * ratio * gate * (1.0 - gate)
    return Terms(values, geometric_mean_ratio(batch), soft_gate_metrics(weight, batch.mask))
