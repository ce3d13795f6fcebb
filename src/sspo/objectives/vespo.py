"""VESPO (arXiv 2602.10693): a detached, gamma-shaped weight on the *sequence* importance weight.

``log w_i = clamp(Σ_t m·Δ + log ρ_i, log 1e-8, 20)`` (the product of the token ratios, no length
normalisation; ``ρ_i`` the rollout correction's weight when one is asked for, 1 otherwise),

``φ(w) = e^λ·w^k·e^(−λw)`` (``φ(1) = 1``), ``(k, λ) = (k_pos, λ_pos)`` if ``A ≥ 0`` else ``(k_neg, λ_neg)``,

``J = 1/N Σ_i,t m·sg[φ(w_i)]·A·logp`` (default ``token-mean``). ``φ`` is computed in log space,
``λ + k·log w − λ·w``, as TRL does; the lower clamp ``log 1e-8`` is the reference code's.
"""

from __future__ import annotations

import math

import torch

from .core import PolicyBatch, Terms, masked_mean, masked_sum, select

LOG_W_MIN = math.log(1e-8)
LOG_W_MAX = 20.0


def _phi(log_w, nonneg, k_pos, lambda_pos, k_neg, lambda_neg):
    k = select(nonneg, k_pos, k_neg, log_w)
    lam = select(nonneg, lambda_pos, lambda_neg, log_w).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_terms(
    batch: PolicyBatch,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> Terms:
    """Token terms ``sg[φ(w_i)]·A·logp``; a token keeps ``φ(w_i)/r`` of the plain policy gradient ``r·A·∇logp``.
    The reported sequence weight is ``φ(w_i)`` (with the sign of the sequence's advantage)."""
    shape = (k_pos, lambda_pos, k_neg, lambda_neg)
    delta = batch.log_ratio.detach()
    log_w = masked_sum(delta, batch.mask, dim=-1)
    if batch.rollout_log_weight is not None:
        log_w = log_w + batch.rollout_log_weight
    log_w = log_w.clamp(LOG_W_MIN, LOG_W_MAX)
    phi = _phi(log_w[:, None].expand_as(delta), batch.token_adv >= 0, *shape)
    values = phi * batch.token_adv * batch.log_probs
    kept = phi * torch.exp(-delta)
    metrics = {"vespo/log_w_mean": masked_mean(log_w, batch.seq_valid)}
    return Terms(values, _phi(log_w, batch.seq_adv >= 0, *shape), kept, metrics)
