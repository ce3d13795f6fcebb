"""``update/effective_ratio``: the mean over valid tokens of the share of the plain policy-gradient signal
a token keeps, checked against autograd (float64) where clipping binds and where it does not."""

import math

import pytest
import torch
from objective_cases import SEQUENCE_OBJECTIVES, grad_of, random_case

import sspo

KEY = "update/effective_ratio"
CLIPPING = ("grpo", "gspo", "gspo_token", "gmpo", "cispo", "luspo", "dppo_tv", "dppo_kl", "m2po")
BINDING = {"cispo": {"ratio_max": 1.2}, "m2po": {"m2_threshold": 0.05}}  # r > 5 (the default r_max) is rare at drift 0.5


def _plain_gradient(name, lp, old, adv, mask):
    """∂J/∂logp with every clip and gate derivative replaced by 1, the sequence weight kept: r·A (token
    objectives) or W_i·A (sequence objectives, W_i = the weight the objective used), then aggregated."""
    n = mask.sum(-1).double()
    g_seqs = (n > 0).sum()
    delta = torch.where(mask, lp.detach() - old, 0.0)
    a = adv[:, None]
    if sspo.get_objective(name).default_agg_mode == "token-mean":  # cispo, vespo, dppo_*, m2po
        return torch.exp(delta) * a / n.sum()
    if name in (*SEQUENCE_OBJECTIVES, "luspo"):
        if name in ("gspo", "gspo_token", "luspo"):
            weight = torch.exp(delta.sum(-1) / n.clamp(min=1))
        else:  # gmpo, sspo: the weight of the objective's value J = 1/G' Σ W_i·A_i, read back from J's terms
            weight = _sequence_weights(name, delta, adv, mask)
        per_token = n.clamp(min=1) if name != "luspo" else 1.0  # luspo: n_i·W_i·A_i summed over n_i tokens
        return (weight * adv / per_token / g_seqs)[:, None].expand_as(delta)
    return torch.exp(delta) * a / n.clamp(min=1)[:, None] / g_seqs


def _sequence_weights(name, delta, adv, mask):
    n = mask.sum(-1).double().clamp(min=1)
    if name == "gmpo":
        ell = torch.where(adv[:, None] > 0, delta.clamp(max=0.4), delta.clamp(min=-0.4))
        return torch.exp(torch.where(mask, ell, 0.0).sum(-1) / n)
    tau = torch.where(adv > 0, torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.05, dtype=torch.float64))[:, None]
    return torch.exp(torch.where(mask, torch.atan(tau * delta) / tau, 0.0).sum(-1) / n)


@pytest.mark.parametrize("name", sspo.OBJECTIVES)
@pytest.mark.parametrize("regime", ["binding", "on-policy-ish"])
def test_effective_ratio_is_the_autograd_share(name, regime):
    drift = 0.5 if regime == "binding" else 1e-7
    lp, old, adv, mask = random_case(11, batch=8, length=12, drift=drift)
    hp = BINDING.get(name, {}) if regime == "binding" else {}
    out = sspo.policy_loss(name, lp, old, adv, mask, **hp)
    share = -grad_of(out.loss, lp) / _plain_gradient(name, lp, old, adv, mask)
    expected = share[mask].mean()
    torch.testing.assert_close(out.metrics[KEY], expected, rtol=1e-12, atol=1e-14)
    assert not out.metrics[KEY].requires_grad and out.metrics[KEY].dtype == torch.float64
    if regime == "binding":
        assert expected < 0.95  # the clip or gate really acted
    elif name in CLIPPING:
        assert out.metrics[KEY].item() == 1.0
    else:  # vespo's share φ(w_i)/r_t moves at first order in Δ (|Δ| ~ 1e-7 here), the gates' at second
        assert out.metrics[KEY].item() == pytest.approx(1.0, abs=1e-6 if name == "vespo" else 1e-12)


def _one_sequence(deltas, adv):
    delta = torch.tensor([deltas], dtype=torch.float64)
    old = torch.full_like(delta, -1.0)
    return (old + delta).requires_grad_(True), old, torch.tensor([adv], dtype=torch.float64), torch.ones_like(delta, dtype=torch.bool)


def test_known_values():
    # GRPO, A > 0: r = 1.5 is clipped (ε_high = 0.2), r = 0.5 is not → 3 of 4 tokens keep their gradient
    out = sspo.policy_loss("grpo", *_one_sequence([math.log(1.5), math.log(0.5), 0.0, 0.0], 1.0))
    assert out.metrics[KEY].item() == 0.75
    # CISPO: r = 10 with r_max = 5 keeps min(r, r_max)/r = ½
    out = sspo.policy_loss("cispo", *_one_sequence([math.log(10.0), 0.0], 1.0), ratio_max=5.0)
    assert out.metrics[KEY].item() == pytest.approx(0.75, abs=1e-15)
    # SSPO arctan: h'(Δ) = ½ at Δ = 1/τ
    out = sspo.policy_loss("sspo", *_one_sequence([1 / 1.05, 0.0], -1.0))
    assert out.metrics[KEY].item() == pytest.approx(0.75, abs=1e-15)
    # SAPO: f'(r) = 4σ(1−σ) = ½ at τ(r − 1) = 2·asinh(1)
    out = sspo.policy_loss("sapo", *_one_sequence([math.log(1 + 2 * math.asinh(1.0)), 0.0], 1.0))
    assert out.metrics[KEY].item() == pytest.approx(0.75, abs=1e-15)
    # GSPO: the mean is over tokens: a clipped 3-token sequence and a kept 1-token one → 1/4
    lp = torch.tensor([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    out = sspo.policy_loss("gspo", lp, torch.zeros_like(lp), torch.tensor([1.0, 1.0], dtype=torch.float64), mask)
    assert out.metrics[KEY].item() == 0.25


@pytest.mark.parametrize("name", sspo.OBJECTIVES)
def test_every_objective_reports_it_in_float32_without_grad(name):
    lp, old, adv, mask = random_case(2, dtype=torch.float32)
    out = sspo.policy_loss(name, lp, old, adv, mask)
    value = out.metrics[KEY]
    assert value.dim() == 0 and not value.requires_grad and 0.0 <= value.item() <= (1.25 if name == "vespo" else 1.0)
