"""Per-batch policy-gradient estimates and their bias / variance against the exact gradient.

**One backward pass for M batches.** Every objective's loss is a sum of per-sequence terms divided
by a count (sequences, or tokens for ``token-mean``). Passing ``global_num_seqs = G`` and
``global_num_tokens = G·L`` to :func:`sspo.policy_loss` over the stacked ``M·G`` sequences makes
the stacked loss equal ``Σ_m loss_m`` exactly: the normaliser is the one of a single batch of G.
Batch ``m`` is scored by its own copy ``θ_m`` of the parameters (a ``[M, L, V+1, V]`` leaf), so
``∂(Σ_m loss_m)/∂θ_m = ∂loss_m/∂θ`` and one ``autograd.grad`` gives all M per-batch gradients.
The estimate of the ascent direction is ``g_m = −∂loss_m/∂θ``.

**Objectives whose terms couple the whole batch.** M2PO masks tokens by the second moment of the
log-ratios over the batch it is given, so over the stacked batches its mask would mix the M groups.
For it the mask is computed per group here (:func:`m2po_group_mask`, Algorithm 1 on each group's
``G·L`` tokens, as one call of ``policy_loss`` on that group alone computes it) and passed as the
response mask; with ``global_num_tokens = G·L`` the token mean still divides by every token. Within a
kept set the mean second moment is already below the threshold, so the core masks nothing more.

**REINFORCE-form objectives** (CISPO, VESPO, DPPO) have a loss whose value is not a surrogate of
``J`` (a detached weight times ``A·log π``); only its gradient is used here, as for every objective.
"""

from __future__ import annotations

import math

import torch

from .objectives import ObjectiveVariant
from .policy import token_logprobs

__all__ = ["gradient_metrics", "m2po_group_mask", "per_batch_gradients", "reference_loss"]

_METRIC_KEYS = {"pg_clipfrac": "clipfrac", "gate/attenuated_frac": "gate_attenuated_frac"}


def reference_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, rewards: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Unbiased off-policy REINFORCE with sequence importance weights and a leave-one-out baseline.

    For each group of G responses ``y_i ~ μ``: ``w_i = π(y_i)/μ(y_i)`` (detached),
    ``b_{-i} = mean_{j≠i} R_j`` and the loss is ``−1/G Σ_i w_i (R_i − b_{-i}) log π(y_i)``, summed
    over groups. Since ``b_{-i}`` is independent of ``y_i`` and ``E_μ[w ∇log π] = 0``, its gradient
    is an unbiased estimate of ``∇J(θ)`` for every behaviour policy μ (with full support).
    Shapes: log-probs ``[M·G, L]``, rewards ``[M·G]``.
    """
    seq_logp = log_probs.sum(-1)
    weights = (seq_logp - old_log_probs.sum(-1)).detach().exp()
    groups = rewards.reshape(-1, group_size)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    advantages = (groups - baseline).reshape(-1)
    return -(weights * advantages * seq_logp).sum() / group_size


def m2po_group_mask(log_ratio: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[M, G, L]`` bool: the tokens M2PO's Algorithm 1 keeps in each group ``m`` of ``log_ratio [M, G, L]``
    (every token valid): with the ``G·L`` values ``Δ²`` sorted descending (stable), the first ``k`` are
    masked, ``k`` the smallest with ``Σ_{j≥k} s_j ≤ τ·(n − k)`` (all of them when none fits) — the
    batched form of :func:`sspo.objectives.m2po.second_moment_mask`."""
    num_batches = log_ratio.shape[0]
    m2 = (log_ratio.detach() ** 2).reshape(num_batches, -1)
    n = m2.shape[1]
    sorted_m2, order = torch.sort(m2, dim=1, descending=True, stable=True)
    before = torch.cumsum(sorted_m2, 1) - sorted_m2
    k = torch.arange(n, device=m2.device)
    fits = sorted_m2.sum(1, keepdim=True) - before <= threshold * (n - k)
    first = torch.where(fits.any(1), torch.argmax(fits.to(torch.uint8), 1), n)
    rank = torch.empty_like(order).scatter_(1, order, k.expand(num_batches, n))
    return (rank >= first[:, None]).reshape(log_ratio.shape)


def per_batch_gradients(
    variant: ObjectiveVariant,
    theta: torch.Tensor,
    theta_old: torch.Tensor,
    sequences: torch.Tensor,
    rewards: torch.Tensor,
    advantages: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Gradient estimate of each of M batches for one objective.

    ``theta`` is the current policy (where the gradient is taken), ``theta_old`` the behaviour
    policy that sampled ``sequences [M, G, L]``; ``rewards`` and ``advantages`` are ``[M, G]``
    (the reference estimator uses the rewards, the core objectives the advantages).
    Returns ``(grads [M, P], metrics)`` with ``P = theta.numel()`` and ``grads[m] = −∇loss_m``.
    """
    num_batches, group_size, length = sequences.shape
    stacked = theta.detach().expand(num_batches, *theta.shape).clone().requires_grad_(True)
    log_probs = token_logprobs(stacked, sequences).reshape(num_batches * group_size, length)
    with torch.no_grad():
        old_log_probs = token_logprobs(theta_old, sequences.reshape(-1, length))
    metrics: dict[str, float] = {}
    if variant.objective is None:
        loss = reference_loss(log_probs, old_log_probs, rewards.reshape(-1), group_size)
    else:
        import sspo

        mask = torch.ones_like(log_probs, dtype=torch.bool)
        masked_frac = None
        if variant.objective == "m2po":
            if variant.loss_agg_mode not in (None, "token-mean"):
                raise ValueError("m2po's per-group mask keeps the token-mean normaliser only (loss_agg_mode=token-mean)")
            threshold = variant.hyperparameters.get("m2_threshold", sspo.get_objective("m2po").defaults["m2_threshold"])
            log_ratio = (log_probs.detach() - old_log_probs).clamp(-20.0, 20.0)  # policy_loss's log_ratio_clamp
            mask = m2po_group_mask(log_ratio.reshape(num_batches, group_size, length), threshold)
            mask = mask.reshape(num_batches * group_size, length)
            masked_frac = float((~mask).double().mean())
        out = sspo.policy_loss(
            variant.objective,
            log_probs,
            old_log_probs,
            advantages.reshape(-1),
            mask,
            loss_agg_mode=variant.loss_agg_mode,
            global_num_seqs=group_size,
            global_num_tokens=group_size * length,
            check_finite=False,  # finite by construction; skips three host syncs
            **variant.hyperparameters,
        )
        loss = out.loss
        for key, name in _METRIC_KEYS.items():
            if key in out.metrics:
                metrics[name] = float(out.metrics[key])
        if masked_frac is not None:
            metrics["clipfrac"] = masked_frac  # the core saw the per-group mask as the response mask
    (grad,) = torch.autograd.grad(loss, stacked)
    return -grad.reshape(num_batches, -1), metrics


def gradient_metrics(
    grads: torch.Tensor, true_grad: torch.Tensor, update_groups: int = 64
) -> dict[str, float]:
    """Bias, variance and error of M gradient estimates ``g_m`` against the exact ``∇J``.

    With ``ḡ = mean_m g_m``, ``Σ`` the sample covariance and ``E‖g‖² = mean_m ‖g_m‖²``:

    - ``cosine = ⟨ḡ, ∇J⟩ / (‖∇J‖ sqrt(‖ḡ‖² − tr Σ / M))`` — direction of the mean estimate,
      ``cos(E[g], ∇J)``, with the sampling noise removed from ``‖ḡ‖²`` (both numerator and the
      squared norm are then unbiased; the ratio is consistent and may exceed 1 by noise; NaN when
      the noise-corrected ``‖ḡ‖²`` is not positive);
    - ``cosine_raw = ⟨ḡ, ∇J⟩ / (‖ḡ‖ ‖∇J‖)`` — the plain cosine, pulled towards 0 by noise;
    - ``projection = ⟨ḡ, ∇J⟩ / ‖∇J‖²`` — scale along the true gradient (1 = unbiased);
    - ``cosine_single = mean_m cos(g_m, ∇J)`` — how uphill a single batch's step points;
    - ``variance = tr Σ / ‖∇J‖²`` (unbiased ``tr Σ`` with ``M − 1``);
    - ``bias2 = (‖ḡ − ∇J‖² − tr Σ / M) / ‖∇J‖²`` — unbiased estimate of ``‖E g − ∇J‖²``;
    - ``mse = mean_m ‖g_m − ∇J‖² / ‖∇J‖²`` (≈ ``bias2 + variance``);
    - ``nmse = min_c E‖c·g − ∇J‖² / ‖∇J‖² = 1 − ⟨E g, ∇J⟩² / (‖∇J‖² (‖E g‖² + tr Σ))`` — the
      error of one group's estimate left with the best step size ``c``, free of each objective's
      scale, in ``[0, 1]`` (0: a rescaled ∇J; 1: useless);
    - ``nmse_update``: the same for the mean of ``update_groups`` independent groups (one update's
      batch), i.e. with ``tr Σ / update_groups`` in place of ``tr Σ``;
    - ``snr = ⟨ḡ, ∇J⟩² / (‖∇J‖² tr Σ)`` — the useful signal (the mean's component along ∇J)
      over the noise of one group, scale free.

    ``‖E g‖²`` is estimated without bias by ``‖ḡ‖² − tr Σ / M``.

    ``variance``, ``bias2`` and ``mse`` are relative to ``‖∇J‖²`` and carry each objective's own
    scale (advantage normalisation, ``1/L`` token means); compare objectives with the scale-free
    columns.
    """
    grads = grads.to(torch.float64)
    true_grad = true_grad.reshape(-1).to(torch.float64)
    num = grads.shape[0]
    mean = grads.mean(0)
    true_sq = float(true_grad @ true_grad)
    inner = float(mean @ true_grad)
    mean_sq = float(mean @ mean)
    trace_cov = float(((grads - mean) ** 2).sum()) / max(num - 1, 1)
    norms = grads.norm(dim=1) * math.sqrt(true_sq)
    single = torch.where(norms > 0, (grads @ true_grad) / norms.clamp_min(1e-300), torch.zeros_like(norms))
    signal_sq = mean_sq - trace_cov / num
    return {
        "cosine": inner / math.sqrt(signal_sq * true_sq) if signal_sq > 0 else math.nan,
        "cosine_raw": inner / math.sqrt(mean_sq * true_sq) if mean_sq > 0 else 0.0,
        "projection": inner / true_sq,
        "cosine_single": float(single.mean()),
        "variance": trace_cov / true_sq,
        "bias2": (float(((mean - true_grad) ** 2).sum()) - trace_cov / num) / true_sq,
        "mse": float(((grads - true_grad) ** 2).sum(1).mean()) / true_sq,
        "nmse": _nmse(inner, true_sq, signal_sq, trace_cov),
        "nmse_update": _nmse(inner, true_sq, signal_sq, trace_cov / update_groups),
        "snr": inner**2 / (true_sq * trace_cov) if trace_cov > 0 else math.inf,
    }


def _nmse(inner: float, true_sq: float, signal_sq: float, noise: float) -> float:
    """``1 − ⟨E g, ∇J⟩² / (‖∇J‖² (‖E g‖² + noise))``, the error after the best rescaling."""
    second_moment = max(signal_sq, 0.0) + noise
    return 1.0 - inner**2 / (true_sq * second_moment) if second_moment > 0 else 1.0
