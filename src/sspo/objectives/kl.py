"""KL penalty estimators of ``KL(π_θ‖π_ref)`` from ``x = ref − logp`` per token (Schulman 2020).

- ``k1``: ``−x``            (unbiased, high variance, can be negative)
- ``k2``: ``x²/2``
- ``k3``: ``exp(x) − 1 − x`` (unbiased, non-negative; ``x`` clamped before ``exp``)
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(log_probs: Tensor, ref_log_probs: Tensor, estimator: str = "k3", clamp: float = 20.0) -> Tensor:
    """Per-token KL estimate (elementwise; masking is the caller's)."""
    x = (ref_log_probs - log_probs).clamp(-clamp, clamp)
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k3":
        return torch.expm1(x) - x
    raise ValueError(f"kl_estimator={estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
