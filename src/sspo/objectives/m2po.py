"""M2PO (Zheng, Zhao & Chen, arXiv 2510.01161): a bound on the batch's second moment of log-ratios.

With ``M2_t = Δ_t²`` (``Δ = log π_θ − log π_old``, detached, ``old`` the behaviour policy), the paper's
Algorithm 1 masks the token with the largest ``M2`` while the mean ``M2`` of the tokens still kept
exceeds ``τ_M2``; masked tokens leave that mean. The kept tokens take the unclipped ratio surrogate:

``J = 1/N Σ_i,t m·M[i,t]·r·A``  (``N`` counts every response token, masked ones too).

Here the loop is one sort: with the valid ``M2`` sorted descending (stable: of equal values the earlier
position goes first) the first ``k`` are masked, ``k`` the smallest with ``Σ_{j≥k} s_j ≤ τ·(n − k)``;
all are masked when no such ``k`` exists. Only values above τ can be masked, so only they are sorted,
as integers (their bit patterns, see :func:`_sort_descending`).
The mask is computed over the tokens of the batch given (a micro-batch, when the caller splits one, as
AReaL does).
"""

from __future__ import annotations

import torch

from .core import PolicyBatch, Terms, geometric_mean_ratio, share

_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32,
                   torch.float16: torch.int16, torch.bfloat16: torch.int16}  # fmt: skip


def _sort_descending(values: torch.Tensor) -> torch.Tensor:
    """The stable descending order of non-negative, non-NaN ``values`` (ties: the earlier first).

    The bit pattern of a float ``x ≥ 0``, read as an integer, grows with ``x`` and equal values share
    it, so the stable ascending sort of ``−bits`` is that very order; on CPU, PyTorch sorts integers many
    times faster than floats (about 10× for 10⁵ values, one thread)."""
    return torch.sort(values.view(_SAME_WIDTH_INT[values.dtype]).neg(), stable=True).indices


def second_moment_mask(m2: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B, T]`` bool: the tokens Algorithm 1 masks, for ``m2 = Δ²`` (0 where ``mask`` is 0).

    Only tokens with ``M2 > τ`` can be masked (once the largest kept value is at most τ, so is the
    mean), so only those are sorted: one host sync (their count), then an integer sort of ``c`` of them."""
    flat = m2.flatten()
    candidates = (mask.flatten() & (flat > threshold)).nonzero().squeeze(1)  # in position order
    if candidates.numel() == 0:
        return torch.zeros_like(mask)
    values = flat[candidates]
    order = _sort_descending(values)
    values = values[order]
    before = torch.cumsum(values, 0) - values  # Σ of the candidates masked before the k-th
    k = torch.arange(values.numel(), device=m2.device)
    fits = flat.sum() - before <= threshold * (torch.count_nonzero(mask) - k)
    # masking every candidate always fits (the rest are all ≤ τ; nothing left counts as fitting too)
    first = torch.where(fits.any(), torch.argmax(fits.to(torch.uint8)), values.numel())
    drop = torch.zeros_like(mask)
    drop.view(-1)[candidates[order]] = k < first
    return drop


def m2po_terms(batch: PolicyBatch, *, m2_threshold: float = 0.04) -> Terms:
    """Token terms ``M·r·A`` with Algorithm 1's mask ``M``; a kept token keeps all of its gradient.

    Metrics: the clip fractions count the masked tokens (``_low``: ``r < 1``, ``_high``: the rest),
    ``m2po/m2`` and ``m2po/m2_kept`` are the mean ``M2`` over the valid and the kept tokens."""
    m2 = batch.log_ratio.detach() ** 2  # 0 where masked
    dropped = second_moment_mask(m2, batch.mask, m2_threshold)
    keep = batch.mask & ~dropped
    ratio = torch.exp(batch.log_ratio)
    zero = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
    values = torch.where(keep, ratio * batch.token_adv, zero)
    with torch.no_grad():
        # count_nonzero: a bool .sum() would copy the [B, T] flags to int64 first
        n, n_dropped = torch.count_nonzero(batch.mask), torch.count_nonzero(dropped)
        n_low = torch.count_nonzero(dropped & (ratio < 1))
        masked_frac = share(n_dropped, n)
        metrics = {
            "pg_clipfrac": masked_frac,
            "pg_clipfrac_low": share(n_low, n),
            "pg_clipfrac_high": share(n_dropped - n_low, n),
            "m2po/masked_frac": masked_frac,
            "m2po/m2": m2.sum() / n.clamp(min=1),
            "m2po/m2_kept": torch.where(keep, m2, zero).sum() / (n - n_dropped).clamp(min=1),
        }
    return Terms(values, geometric_mean_ratio(batch), keep.to(ratio.dtype), metrics)
