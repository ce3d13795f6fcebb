"""SAPO (Gao et al. 2025): a soft gate on each token ratio, ``J = 1/G' Σ_i 1/n_i Σ_t m·f_τ(r)·A``,
``τ = τ_pos if A > 0 else τ_neg``.

Default gate: SAPO's own ``f(r) = (4/τ)·σ(τ(r − 1))``. ``gate`` takes any ratio-space gate instead
(``arctan_ratio``, ``erf_ratio``, ``softsign_ratio``, ``sigmoid_ratio``, or a registered one). The
gradient is ``f'(r)·r·A·∇logp``: each token keeps the share ``f'(r)`` of the plain policy gradient
``r·A·∇logp`` (``4σ(1 − σ)`` for the default, 1 on-policy).
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, geometric_mean_ratio, select, soft_gate_metrics
from .gates import Gate, get_gate


def sapo_terms(
    batch: PolicyBatch, *, tau_pos: float = 1.0, tau_neg: float = 1.05, gate: str | Gate | None = None
) -> Terms:
    """Token terms ``f_τ(r)·A``; ``gate=None`` is SAPO's sigmoid, which equals ``sigmoid_ratio`` up to
    the constant ``1 − 2/τ`` (the same gradient)."""
    ratio = torch.exp(batch.log_ratio)
    adv = batch.token_adv
    tau = select(adv > 0, tau_pos, tau_neg, ratio)
    if gate is None:
        sig = torch.sigmoid(tau * (ratio - 1.0))
        values = (4.0 / tau) * sig * adv
        weight = (4.0 * sig * (1.0 - sig)).detach()
    else:
        ratio_gate = get_gate(gate, space="ratio")
        values = ratio_gate.f(ratio, tau) * adv
        weight = ratio_gate.f_prime(ratio, tau)
    return Terms(values, geometric_mean_ratio(batch), weight, soft_gate_metrics(weight, batch.mask))
