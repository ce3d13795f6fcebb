"""A tiny tabular autoregressive policy whose expected reward can be enumerated exactly.

The policy over responses ``y = (y_1, ..., y_L)`` with tokens in ``{0, ..., V-1}`` is

    π_θ(y) = Π_t softmax(θ[t, y_{t-1}])[y_t],        y_0 = BOS = V,

so ``θ`` is a table of logits of shape ``[L, V + 1, V]`` indexed by position and previous token.
Every response has exactly ``L`` tokens (no end-of-sequence token), so there is no length bias in
this testbed. With ``V^L`` sequences (65,536 for ``V = 4, L = 8``) everything below is computed
by enumerating all of them with batched tensor operations:

- ``J(θ) = Σ_y π_θ(y) R(y)`` and its exact gradient ``∇J`` by autograd;
- the sequence-level ``KL(μ ‖ π_θ) = Σ_y μ(y) (log μ(y) − log π_θ(y))``;
- exact sampling from ``μ`` by drawing indices of the enumerated sequences.

The reward is verifiable: ``R(y) = 1`` if the digits sum to ``target ± tolerance``, else 0.
"""

from __future__ import annotations

import torch

__all__ = [
    "all_sequences",
    "calibrate_drift",
    "exact_gradient",
    "init_logits",
    "digit_sum_reward",
    "sample_indices",
    "sequence_kl",
    "sequence_logprobs",
    "token_logprobs",
]


def all_sequences(vocab: int, length: int) -> torch.Tensor:
    """Every sequence of ``length`` tokens over ``vocab`` symbols, ``[vocab**length, length]`` long.

    Row ``n`` is the base-``vocab`` expansion of ``n`` (most significant token first).
    """
    if vocab < 2 or length < 1:
        raise ValueError(f"need vocab >= 2 and length >= 1, got vocab={vocab}, length={length}")
    index = torch.arange(vocab**length)
    powers = vocab ** torch.arange(length - 1, -1, -1)
    return (index[:, None] // powers[None, :]) % vocab


def digit_sum_reward(sequences: torch.Tensor, target: int, tolerance: int = 0) -> torch.Tensor:
    """``R(y) = 1[|Σ_t y_t − target| ≤ tolerance]`` as float64, shape ``sequences.shape[:-1]``."""
    return ((sequences.sum(-1) - target).abs() <= tolerance).to(torch.float64)


def init_logits(vocab: int, length: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random logits table ``θ ~ N(0, scale²)`` of shape ``[length, vocab + 1, vocab]`` (float64)."""
    return scale * torch.randn(length, vocab + 1, vocab, generator=generator, dtype=torch.float64)


def token_logprobs(theta: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """Token log-probabilities ``log π_θ(y_t | y_{t-1})``.

    ``theta`` is one table ``[L, V+1, V]`` with ``sequences [..., L]``, or a stack of tables
    ``[M, L, V+1, V]`` with ``sequences [M, G, L]`` (table ``m`` scores the ``G`` sequences of
    batch ``m``). Returns a tensor shaped like ``sequences``; gradients flow into ``theta``.
    """
    vocab = theta.shape[-1]
    length = sequences.shape[-1]
    table = torch.log_softmax(theta, dim=-1)
    bos = torch.full_like(sequences[..., :1], vocab)
    previous = torch.cat([bos, sequences[..., :-1]], dim=-1)
    position = torch.arange(length).expand_as(sequences)
    if theta.dim() == 3:
        return table[position, previous, sequences]
    if theta.dim() == 4 and sequences.dim() == 3 and sequences.shape[0] == theta.shape[0]:
        batch = torch.arange(theta.shape[0])[:, None, None].expand_as(sequences)
        return table[batch, position, previous, sequences]
    raise ValueError(
        f"theta {tuple(theta.shape)} and sequences {tuple(sequences.shape)} do not match: "
        "expected [L, V+1, V] with [..., L] or [M, L, V+1, V] with [M, G, L]"
    )


def sequence_logprobs(theta: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """``log π_θ(y) = Σ_t log π_θ(y_t | y_{t-1})``, shape ``sequences.shape[:-1]``."""
    return token_logprobs(theta, sequences).sum(-1)


def exact_gradient(
    theta: torch.Tensor, sequences: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``J(θ) = Σ_y π_θ(y) R(y)`` and ``∇_θ J`` by enumeration and autograd.

    ``sequences`` must hold all ``V^L`` sequences (see :func:`all_sequences`). Returns
    ``(J, grad)`` with ``grad`` shaped like ``theta``; both detached.
    """
    theta = theta.detach().requires_grad_(True)
    objective = (sequence_logprobs(theta, sequences).exp() * rewards).sum()
    (grad,) = torch.autograd.grad(objective, theta)
    return objective.detach(), grad


def sequence_kl(theta_p: torch.Tensor, theta_q: torch.Tensor, sequences: torch.Tensor) -> float:
    """Exact sequence-level ``KL(p ‖ q) = Σ_y p(y) (log p(y) − log q(y))`` in nats."""
    with torch.no_grad():
        log_p = sequence_logprobs(theta_p, sequences)
        log_q = sequence_logprobs(theta_q, sequences)
        return float((log_p.exp() * (log_p - log_q)).sum())


def calibrate_drift(
    theta_old: torch.Tensor,
    direction: torch.Tensor,
    sequences: torch.Tensor,
    target_kl: float,
    rel_tol: float = 1e-4,
    max_iter: int = 200,
) -> tuple[float, float]:
    """Step ``δ ≥ 0`` such that ``KL(π_{θ_old} ‖ π_{θ_old + δ·direction}) = target_kl``.

    ``log π_θ(y)`` is a sum of log-softmax terms, hence concave in ``θ``; the KL is therefore
    convex in ``δ`` with value and slope 0 at ``δ = 0``, so it increases monotonically for
    ``δ > 0`` and bisection finds the unique root. Returns ``(δ, achieved KL)``.
    """
    if target_kl < 0:
        raise ValueError(f"target_kl must be >= 0, got {target_kl}")
    if target_kl == 0:
        return 0.0, 0.0

    with torch.no_grad():
        log_mu = sequence_logprobs(theta_old, sequences)
        mu = log_mu.exp()

    def kl_at(delta: float) -> float:
        with torch.no_grad():
            return float((mu * (log_mu - sequence_logprobs(theta_old + delta * direction, sequences))).sum())

    low, high = 0.0, 1.0
    while kl_at(high) < target_kl:
        low, high = high, 2.0 * high
        if high > 1e6:
            raise ValueError(f"cannot reach KL {target_kl} along this direction")
    kl = kl_at(high)
    for _ in range(max_iter):
        mid = 0.5 * (low + high)
        kl = kl_at(mid)
        if abs(kl - target_kl) <= rel_tol * target_kl:
            return mid, kl
        if kl < target_kl:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high), kl


def sample_indices(probs: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """``num`` i.i.d. indices into the enumerated sequences drawn with probabilities ``probs``."""
    return torch.multinomial(probs, num, replacement=True, generator=generator)
