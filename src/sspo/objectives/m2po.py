"""M2PO (Zheng, Zhao & Chen, arXiv 2510.01161): a bound on the batch's second moment of log-ratios.

With ``M2_t = Δ_t²`` (``Δ = log π_θ − log π_old``, detached, ``old`` the behaviour policy), the paper's
Algorithm 1 masks the token with the largest ``M2`` while the mean ``M2`` of the tokens still kept
exceeds ``τ_M2``; masked tokens leave that mean. The kept tokens take the unclipped ratio surrogate:

``J = 1/N Σ_i,t m·M[i,t]·r·A``  (``N`` counts every response token, masked ones too).

Here the loop is one sort: with the valid ``M2`` sorted descending (stable: of equal values the earlier
position goes first) the first ``k`` are masked, ``k`` the smallest with ``Σ_{j≥k} s_j ≤ τ·(n − k)``;
all are masked when no such ``k`` exists. Only values above τ can be masked, so only they are sorted.
The mask is computed over the tokens of the batch given (a micro-batch, when the caller splits one, as
AReaL does).
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, clip_metrics, fraction, geometric_mean_ratio, masked_mean


def second_moment_mask(log_ratio: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B, T]`` bool: the tokens Algorithm 1 keeps.

    Only tokens with ``M2 > τ`` can be masked (once the largest kept value is at most τ, so is the
    mean), so only those are sorted: one host sync (their count), then ``O(c log c)`` for ``c`` of them."""
    m2 = torch.where(mask, log_ratio.detach() ** 2, torch.zeros_like(log_ratio)).flatten()
    candidates = (mask.flatten() & (m2 > threshold)).nonzero().squeeze(1)  # in position order
    if candidates.numel() == 0:
        return mask
    values, order = torch.sort(m2[candidates], descending=True, stable=True)  # ties: the earlier position first
    n = mask.sum()
    before = torch.cumsum(values, 0) - values  # Σ of the candidates masked before the k-th
    k = torch.arange(values.numel(), device=m2.device)
    fits = m2.sum() - before <= threshold * (n - k)
    # masking every candidate always fits (the rest are all ≤ τ; nothing left counts as fitting too)
    first = torch.where(fits.any(), torch.argmax(fits.to(torch.uint8)), values.numel())
    drop = torch.zeros_like(m2, dtype=torch.bool)
    drop[candidates[order]] = k < first
    return mask & ~drop.view_as(mask)


def m2po_terms(batch: PolicyBatch, *, m2_threshold: float = 0.04) -> Terms:
    """Token terms ``M·r·A`` with Algorithm 1's mask ``M``; a kept token keeps all of its gradient."""
    keep = second_moment_mask(batch.log_ratio, batch.mask, m2_threshold)
    ratio = torch.exp(batch.log_ratio)
    zero = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
    values = torch.where(keep, ratio * batch.token_adv, zero)
    dropped = batch.mask & ~keep
    m2 = batch.log_ratio.detach() ** 2
    metrics = clip_metrics(dropped & (ratio < 1), dropped & (ratio >= 1), batch.mask)
    metrics.update({
        "m2po/masked_frac": fraction(dropped, batch.mask),
        "m2po/m2": masked_mean(m2, batch.mask),
        "m2po/m2_kept": masked_mean(m2, keep),
    })  # fmt: skip
    return Terms(values, geometric_mean_ratio(batch), keep.to(ratio.dtype), metrics)
