"""SSPO, Soft Sequence Policy Optimization: the geometric mean of soft token gates as sequence weight.

``s_i = (Π_t f(r_i,t))^(1/n_i) = exp(1/n_i Σ_t m·h_τ(Δ))``,  ``J = 1/G' Σ_i s_i·A_i``,
``τ = τ_pos if A_i > 0 else τ_neg``.  Gradient (the paper's Eq. 13):
``∂J/∂logp[i,t] = (1/G')·A_i·s_i·(1/n_i)·h'_τ(Δ[i,t])``; ``h'`` is the token's share of the
plain policy gradient (``update/effective_ratio``).
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, select, soft_gate_metrics
from .gates import Gate, get_gate


def sspo_terms(
    batch: PolicyBatch,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    gate: str | Gate = "arctan",
    gate_neg: str | Gate | None = None,
    log_weight_clamp: float = 20.0,
) -> Terms:
    """Sequence terms ``s_i·A_i``.

    ``gate`` is a log-space gate ``h`` or a ratio-space gate ``f`` (read as ``h(Δ) = log f(e^Δ)``).
    ``gate_neg`` (default: ``gate``) is used for sequences with ``A_i ≤ 0``; with the hard clips
    ``min(Δ, c)`` / ``max(Δ, −c)`` as ``gate`` / ``gate_neg`` SSPO is GMPO. The sequence log-weight
    is clamped to ``±log_weight_clamp`` before ``exp``.
    """
    pos_gate = get_gate(gate)
    neg_gate = pos_gate if gate_neg is None else get_gate(gate_neg)
    delta = batch.log_ratio
    positive = (batch.seq_adv > 0)[:, None]
    tau = select(positive, tau_pos, tau_neg, delta)
    h = pos_gate.h(delta, tau)
    weight = pos_gate.h_prime(delta, tau)
    if neg_gate is not pos_gate:
        h = torch.where(positive, h, neg_gate.h(delta, tau))
        weight = torch.where(positive, weight, neg_gate.h_prime(delta, tau))
    log_s = batch.seq_mean(h).clamp(-log_weight_clamp, log_weight_clamp)
    s = torch.exp(log_s)
    return Terms(s * batch.seq_adv, s, weight, soft_gate_metrics(weight, batch.mask))
