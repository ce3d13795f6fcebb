"""Group advantages over responses to the same prompt.

- ``grpo``:   ``A = (R − mean_g) / (std_g + floor)``  (std unbiased, as in TRL and verl)
- ``drgrpo``: ``A = R − mean_g``                       (Dr.GRPO, no std normalisation)
- ``rloo``:   ``A = R − mean_{g∖i} = G/(G−1)·(R − mean_g)`` (leave-one-out baseline)

Groups of one response get ``A = 0``. ``adv/zero_std_frac`` reports the fraction of groups whose
rewards are all equal (they carry no learning signal under any of the three). Responses outside
``valid`` (e.g. truncated ones under DAPO's overlong filtering) are left out of their group's
statistics, as if never sampled, and get ``A = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ADVANTAGE_METHODS = ("grpo", "drgrpo", "rloo")


def group_advantages(
    rewards: Tensor,
    group_size: int | None = None,
    *,
    groups: Tensor | None = None,
    method: str = "grpo",
    std_floor: float = 1e-6,
    valid: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Advantages ``[N]`` for rewards ``[N]``; groups are consecutive blocks of ``group_size`` or
    given by integer ids ``groups[N]``; ``valid[N]`` (bool, default all) selects the responses that
    count. Returns ``(advantages, metrics)``."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor, got {getattr(rewards, 'shape', type(rewards))}")
    if method not in ADVANTAGE_METHODS:
        raise ValueError(f"advantage method {method!r} is not one of {', '.join(ADVANTAGE_METHODS)}")
    if std_floor < 0:
        raise ValueError(f"std_floor must be >= 0, got {std_floor}")
    n = rewards.shape[0]
    if (group_size is None) == (groups is None):
        raise ValueError("give exactly one of group_size and groups")
    if groups is None:
        if not isinstance(group_size, int) or group_size < 1 or n % group_size:
            raise ValueError(f"group_size={group_size!r} must be a positive int dividing len(rewards)={n}")
        groups = torch.arange(n, device=rewards.device) // group_size
    elif groups.shape != rewards.shape or groups.is_floating_point():
        raise ValueError(f"groups must be an integer tensor shaped like rewards {tuple(rewards.shape)}")
    if valid is not None and (valid.shape != rewards.shape or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool tensor shaped like rewards {tuple(rewards.shape)}")
    groups = torch.unique(groups, return_inverse=True)[1]
    num_groups = int(groups.max()) + 1 if n else 0
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    keep = torch.ones_like(r) if valid is None else valid.to(r.dtype)

    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, groups, keep)
    mean = torch.zeros_like(count).index_add_(0, groups, r * keep) / count.clamp(min=1)
    centred = (r - mean[groups]) * keep
    var = torch.zeros_like(count).index_add_(0, groups, centred**2) / (count - 1).clamp(min=1)
    std = var.sqrt()
    size = count[groups]
    if method == "grpo":
        adv = centred / (std[groups] + std_floor)
    elif method == "drgrpo":
        adv = centred
    else:
        adv = centred * size / (size - 1).clamp(min=1)
    adv = torch.where((size > 1) & (keep > 0), adv, torch.zeros_like(adv))
    gmax = torch.full_like(count, float("-inf")).scatter_reduce(0, groups, r.masked_fill(keep == 0, -math.inf), "amax")
    gmin = torch.full_like(count, float("inf")).scatter_reduce(0, groups, r.masked_fill(keep == 0, math.inf), "amin")
    no_signal = (gmax <= gmin) | (count < 2)
    metrics = {
        "adv/zero_std_frac": no_signal.float().mean() if num_groups else r.new_zeros(()),
        "adv/mean": adv.mean() if n else r.new_zeros(()),
        "adv/abs_mean": adv.abs().mean() if n else r.new_zeros(()),
        "reward/group_std_mean": std.mean() if num_groups else r.new_zeros(()),
    }
    return adv, metrics
