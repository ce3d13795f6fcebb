"""Engines' per-sample importance weights (rollout correction), folded into the advantages.

verl's ``rollout_is_weights`` and TRL's vLLM ``importance_sampling_ratio`` multiply each token's
loss term by a detached weight ``w ≥ 0``. For every sspo objective the term is positively
homogeneous in the advantage and depends on it only through its sign, so for ``w ≥ 0``:

- token objectives (``grpo``, ``sapo``, ``cispo``): ``w_t·term(r_t, A) = term(r_t, w_t·A)``
  (e.g. ``w·min(r·A, clip(r)·A) = min(r·wA, clip(r)·wA)``), so a ``[B, T]`` weight becomes a
  per-token advantage;
- sequence objectives (``gspo``, ``gspo_token``, ``gmpo``, ``sspo``): ``w_i·s_i·A_i = s_i·(w_i·A_i)``
  for a weight constant along the sequence; a weight that varies inside a sequence has no
  equivalent and is refused.
"""

from __future__ import annotations

import torch

import sspo


def _row_constant(weights: torch.Tensor, mask: torch.Tensor, atol: float) -> torch.Tensor:
    """``[B]`` weight of each row if it is constant over the row's valid tokens, else raise."""
    big = torch.full((), float("inf"), dtype=weights.dtype, device=weights.device)
    lo = torch.where(mask, weights, big).amin(-1)
    hi = torch.where(mask, weights, -big).amax(-1)
    valid = mask.any(-1)
    if bool(((hi - lo > atol) & valid).any()):  # one host sync, only when weights are given
        raise ValueError(
            "token-level importance weights vary inside a sequence: a sequence-level objective can only "
            "take one weight per sequence (use a sequence-level rollout correction)"
        )
    return torch.where(valid, hi, torch.zeros_like(hi))


def fold_sample_weights(
    objective: str,
    advantages: torch.Tensor,
    weights: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    atol: float = 1e-6,
) -> torch.Tensor:
    """Advantages with detached non-negative ``weights`` (``[B]``, ``[B, 1]`` or ``[B, T]``) folded in.

    Returns ``advantages`` unchanged when ``weights`` is None. The result's shape is ``[B]`` for
    per-sequence weights on per-sequence advantages, otherwise ``[B, T]``.
    """
    if weights is None:
        return advantages
    weights = weights.detach()
    mask = mask.bool()
    if weights.dim() == 2 and weights.shape[1] == 1:
        weights = weights[:, 0]
    if weights.dim() == 2 and sspo.get_objective(objective).sequence_level:
        weights = _row_constant(weights.to(advantages.dtype), mask, atol)
    if weights.dim() == 1:
        weights = weights.to(advantages.dtype)
        return advantages * (weights if advantages.dim() == 1 else weights[:, None])
    token_adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(weights)
    zero = torch.zeros((), dtype=token_adv.dtype, device=token_adv.device)
    return torch.where(mask, token_adv * weights.to(token_adv.dtype), zero)
