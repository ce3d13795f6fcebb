"""``match_clip_temperatures``: the token weight is ½ exactly where GRPO's clip starts, for every gate."""

import dataclasses
import math

import pytest
import torch
from gate_formulas import LOG_GATES, RATIO_GATES

import sspo
from sspo.objectives import BUILTIN_GATES, Gate

EPS = [(0.2, 0.2), (0.2, 0.28), (0.05, 0.1), (0.5, 1.0)]
CASES = [("sspo", g) for g in (None, *LOG_GATES, *RATIO_GATES)] + [("sapo", g) for g in (None, *RATIO_GATES)]


def test_arctan_rule_in_closed_form():
    taus = sspo.match_clip_temperatures(0.2, 0.2)
    assert taus == {"tau_pos": 1 / math.log(1.2), "tau_neg": 1 / abs(math.log(0.8))}
    assert taus["tau_pos"] == pytest.approx(5.48, abs=0.005) and taus["tau_neg"] == pytest.approx(4.48, abs=0.005)
    assert sspo.match_clip_temperatures(0.2, 0.28) == {"tau_pos": 1 / math.log(1.28), "tau_neg": 1 / abs(math.log(0.8))}


def _gradient_share(objective, gate, taus, ratio, adv):
    """One token at ratio r: the share of the plain policy gradient it keeps, from autograd of the loss
    (SSPO: ∂J/∂logp ÷ (A·s), SAPO: ∂J/∂logp ÷ (A·r)), and the objective's effective-ratio metric."""
    old = torch.full((1, 1), -1.0, dtype=torch.float64)
    lp = (old + math.log(ratio)).requires_grad_(True)
    kw = {} if gate is None else {"gate": gate}
    out = sspo.policy_loss(objective, lp, old, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), **taus, **kw)
    (grad,) = torch.autograd.grad(-out.loss, lp)
    plain = out.metrics["seq_weight/mean"] if objective == "sspo" else torch.tensor(ratio, dtype=torch.float64)
    return (grad / (adv * plain)).item(), out.metrics["update/effective_ratio"].item()


@pytest.mark.parametrize(("eps_low", "eps_high"), EPS)
@pytest.mark.parametrize(("objective", "gate"), CASES)
def test_weight_is_half_at_the_clip_boundary(objective, gate, eps_low, eps_high):
    taus = sspo.match_clip_temperatures(eps_low, eps_high, objective=objective, gate=gate)
    for ratio, adv in ((1 + eps_high, 1.0), (1 - eps_low, -1.0)):
        share, metric = _gradient_share(objective, gate, taus, ratio, adv)
        assert share == pytest.approx(0.5, abs=1e-10)
        assert metric == pytest.approx(0.5, abs=1e-10)


@pytest.mark.parametrize(
    ("objective", "gate"), [c for c in CASES if (c[0] == "sspo") == (c[1] in (None, *LOG_GATES))]
)
def test_closed_form_equals_the_numerical_solution(objective, gate):
    """Dropping a built-in's closed form sends it to the bisection, which must find the same τ."""
    name = gate or {"sspo": "arctan", "sapo": "sigmoid_ratio"}[objective]
    assert BUILTIN_GATES[name].half_weight_at is not None
    numeric = dataclasses.replace(BUILTIN_GATES[name], half_weight_at=None)
    for eps in EPS:
        fast = sspo.match_clip_temperatures(*eps, objective=objective, gate=name)
        slow = sspo.match_clip_temperatures(*eps, objective=objective, gate=numeric)
        assert slow == pytest.approx(fast, rel=1e-12)


def test_sapo_default_matches_its_sigmoid():
    """SAPO's own gate has f' = 4σ(τ(r−1))(1−σ): ½ at τ|r − 1| = 2·asinh(1), so τ = 2·asinh(1)/ε."""
    taus = sspo.match_clip_temperatures(0.2, 0.28, objective="sapo")
    assert taus == pytest.approx({"tau_pos": 2 * math.asinh(1) / 0.28, "tau_neg": 2 * math.asinh(1) / 0.2}, rel=1e-15)


def test_gate_without_closed_form_is_solved_numerically():
    tanh_gate = Gate("tanh_log", lambda d, tau: torch.tanh(tau * d) / tau)  # h' = 1 − tanh² = ½ at atanh(1/√2)
    taus = sspo.match_clip_temperatures(0.2, 0.2, gate=tanh_gate)
    u = math.atanh(1 / math.sqrt(2))
    assert taus == pytest.approx({"tau_pos": u / math.log(1.2), "tau_neg": u / abs(math.log(0.8))}, rel=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="objective must be one of sspo, sapo, got 'grpo'"):
        sspo.match_clip_temperatures(0.2, objective="grpo")
    with pytest.raises(ValueError, match=r"eps_low must be in \(0, 1\), got 1.0"):
        sspo.match_clip_temperatures(1.0)
    with pytest.raises(ValueError, match="eps_high must be > 0, got 0"):
        sspo.match_clip_temperatures(0.2, 0)
    with pytest.raises(ValueError, match="'arctan' is a log-space gate"):
        sspo.match_clip_temperatures(0.2, objective="sapo", gate="arctan")
    flat = Gate("identity", lambda d, tau: d)  # h' = 1: never falls to ½
    with pytest.raises(ValueError, match="does not fall through ½"):
        sspo.match_clip_temperatures(0.2, gate=flat)
