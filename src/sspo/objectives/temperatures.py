"""Temperatures matched to a hard clip: the soft gate's token weight falls to ½ where GRPO's clip starts.

GRPO's clip removes a token's gradient once ``r > 1 + ε_high`` (``A > 0``) or ``r < 1 − ε_low``
(``A < 0``). A soft gate never removes it; its token weight ``w_τ`` — the token's share of the plain
policy gradient, SSPO's ``h'_τ(Δ)`` and SAPO's ``f'_τ(r)`` — decays from 1 on-policy. The matched
temperatures put the weight's half-way point on GRPO's clip boundary (docs/objectives.md,
"Temperatures matched to a hard clip"):

    w_τ_pos(r = 1 + ε_high) = ½,        w_τ_neg(r = 1 − ε_low) = ½.

Closed form when the weight is a function of ``u = τ·z`` alone (``z = Δ = log r`` for a log-space gate
in SSPO, ``z = r − 1`` for a ratio-space gate in SAPO) and equals ½ at ``|u| = u½``: ``τ = u½/|z|``.
The arctan gate in SSPO gives ``τ_pos = 1/log(1 + ε_high)``, ``τ_neg = 1/|log(1 − ε_low)|``
(5.48 and 4.48 at ε = 0.2). Otherwise (a ratio gate read in log space by SSPO, a registered gate
without a closed form) τ is found by bisection on ``log τ`` in float64.
"""

from __future__ import annotations

import math

import torch

from .gates import BUILTIN_GATES, Gate, get_gate

OBJECTIVES_WITH_TEMPERATURES = ("sspo", "sapo")
_DEFAULT_GATE = {"sspo": "arctan", "sapo": "sigmoid_ratio"}  # SAPO's own sigmoid has sigmoid_ratio's f'
_TAU_BRACKET = (1e-6, 1e6)
_BISECTIONS = 100


def token_weight(objective: str, gate: Gate, ratio: float, tau: float) -> float:
    """The share of the plain policy gradient a token at ratio ``r`` keeps: SSPO ``h'_τ(log r)``,
    SAPO ``f'_τ(r)``."""
    r = torch.tensor(ratio, dtype=torch.float64)
    t = torch.tensor(tau, dtype=torch.float64)
    weight = gate.h_prime(torch.log(r), t) if objective == "sspo" else gate.f_prime(r, t)
    return float(weight)


def _half_weight_temperature(objective: str, gate: Gate, ratio: float) -> float:
    """τ with ``token_weight(objective, gate, ratio, τ) = ½``."""
    same_space = (objective == "sspo") == (gate.space == "log")
    if gate.half_weight_at is not None and same_space:
        z = math.log(ratio) if objective == "sspo" else ratio - 1.0
        return gate.half_weight_at / abs(z)
    lo, hi = (math.log(t) for t in _TAU_BRACKET)
    if not token_weight(objective, gate, ratio, math.exp(lo)) > 0.5 > token_weight(objective, gate, ratio, math.exp(hi)):
        raise ValueError(
            f"gate {gate.name!r}: its weight at r = {ratio:g} does not fall through ½ for tau in {_TAU_BRACKET}"
        )
    for _ in range(_BISECTIONS):  # the weight falls as τ grows
        mid = 0.5 * (lo + hi)
        if token_weight(objective, gate, ratio, math.exp(mid)) > 0.5:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def match_clip_temperatures(
    eps_low: float = 0.2, eps_high: float | None = None, *, objective: str = "sspo", gate: str | Gate | None = None
) -> dict[str, float]:
    """``{"tau_pos": …, "tau_neg": …}`` whose token weight is ½ at GRPO's clip boundaries ``1 + ε_high``
    (positive advantages) and ``1 − ε_low`` (negative ones); ``eps_high`` defaults to ``eps_low``.

    ``objective``: ``"sspo"`` (any gate, default ``arctan``) or ``"sapo"`` (a ratio-space gate; default
    SAPO's own sigmoid). The result goes straight into ``policy_loss(objective, …, gate=gate, **taus)``.
    """
    eps_high = eps_low if eps_high is None else eps_high
    if objective not in OBJECTIVES_WITH_TEMPERATURES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES_WITH_TEMPERATURES)}, got {objective!r}")
    if not 0 < eps_low < 1:
        raise ValueError(f"eps_low must be in (0, 1), got {eps_low}")
    if not eps_high > 0:
        raise ValueError(f"eps_high must be > 0, got {eps_high}")
    if gate is None:
        resolved = BUILTIN_GATES[_DEFAULT_GATE[objective]]
    else:
        resolved = get_gate(gate, space="ratio" if objective == "sapo" else None)
    return {
        "tau_pos": _half_weight_temperature(objective, resolved, 1.0 + eps_high),
        "tau_neg": _half_weight_temperature(objective, resolved, 1.0 - eps_low),
    }
