"""Random float64 cases shared by the objective tests (padding, an empty row, real drift)."""

import torch

SEQUENCE_OBJECTIVES = ("gspo", "gspo_token", "gmpo", "sspo")
"""One term per sequence, ``seq-mean-token-mean`` only."""
TOKEN_OBJECTIVES = ("grpo", "sapo", "cispo")
REINFORCE_OBJECTIVES = ("cispo", "vespo", "dppo_tv", "dppo_kl")
"""A detached weight on ``A·logp`` (default ``token-mean``)."""


def random_case(seed: int = 0, batch: int = 6, length: int = 9, drift: float = 0.5, dtype=torch.float64):
    """``(log_probs (leaf), old, advantages[B], mask)`` with ragged lengths and one empty row."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=dtype) * 3 - 0.05
    log_probs = (old + drift * torch.randn(batch, length, generator=g, dtype=dtype)).requires_grad_(True)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[1] = 0
    mask = torch.arange(length)[None, :] < lengths[:, None]
    adv = torch.randn(batch, generator=g, dtype=dtype)
    return log_probs, old, adv, mask


def grad_of(loss, log_probs):
    (g,) = torch.autograd.grad(loss, log_probs)
    return g
