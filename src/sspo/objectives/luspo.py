"""LUSPO (arXiv 2602.05261): GSPO with each sequence's term scaled by its length.

``J = 1/G' Σ_i n_i·min(s_i·A_i, clip(s_i, 1−ε_low, 1+ε_high)·A_i)``, ``s_i = exp(1/n_i Σ_t m·Δ)``:
GSPO's sequence term copied onto each of the sequence's tokens and summed (``seq-mean-token-sum``).
"""

from __future__ import annotations

from .core import PolicyBatch, Terms
from .gspo import gspo_terms


def luspo_terms(batch: PolicyBatch, *, eps_low: float = 3e-4, eps_high: float = 4e-4) -> Terms:
    """GSPO's sequence terms broadcast to ``[B, T]``; summed over tokens they are ``n_i·term_i``."""
    terms = gspo_terms(batch, eps_low=eps_low, eps_high=eps_high)
    terms.values = terms.values[:, None].expand_as(batch.log_probs)
    return terms
