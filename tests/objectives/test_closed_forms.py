"""Gradients of every objective equal the closed forms of docs/objectives.md (float64)."""

import pytest
import torch
from gate_formulas import LOG_GATES, RATIO_GATES, h, h_prime, ratio_f, ratio_f_prime
from objective_cases import grad_of, random_case

import sspo

# The objective computes J; autograd of the loss (-J) must equal -dJ/dlogp below.


def _counts(mask):
    n = mask.sum(-1).to(torch.float64)
    return n, (n > 0).sum().to(torch.float64), n.sum()


@pytest.mark.parametrize("seed", range(4))
def test_grpo_gradient_closed_form(seed):
    lp, old, adv, mask = random_case(seed)
    el, eh = 0.2, 0.28
    out = sspo.policy_loss("grpo", lp, old, adv, mask, eps_low=el, eps_high=eh)
    n, g_seqs, _ = _counts(mask)
    r = torch.exp(lp.detach() - old)
    a = adv[:, None].expand_as(r)
    clipped = ((a > 0) & (r > 1 + eh)) | ((a < 0) & (r < 1 - el))
    expected = torch.where(mask & ~clipped, a * r / n.clamp(min=1)[:, None] / g_seqs, 0.0)
    assert clipped[mask].any() and (~clipped[mask]).any()
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_gspo_gradient_closed_form(seed):
    lp, old, adv, mask = random_case(seed, drift=0.01)
    el, eh = 3e-3, 4e-3
    out = sspo.policy_loss("gspo", lp, old, adv, mask, eps_low=el, eps_high=eh)
    n, g_seqs, _ = _counts(mask)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    s = torch.exp(delta.sum(-1) / n.clamp(min=1))
    clipped = ((adv > 0) & (s > 1 + eh)) | ((adv < 0) & (s < 1 - el))
    per_seq = torch.where(clipped, 0.0, adv * s / n.clamp(min=1) / g_seqs)
    expected = torch.where(mask, per_seq[:, None], 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_gmpo_gradient_closed_form(seed):
    lp, old, adv, mask = random_case(seed)
    cl, ch = 0.3, 0.4
    out = sspo.policy_loss("gmpo", lp, old, adv, mask, clip_low=cl, clip_high=ch)
    n, g_seqs, _ = _counts(mask)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    a = adv[:, None]
    ell = torch.where(a > 0, delta.clamp(max=ch), delta.clamp(min=-cl))
    w = torch.exp(torch.where(mask, ell, 0.0).sum(-1) / n.clamp(min=1))
    active = torch.where(a > 0, delta < ch, delta > -cl)
    expected = torch.where(mask & active, (adv * w / n.clamp(min=1) / g_seqs)[:, None], 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_sapo_gradient_closed_form(seed):
    lp, old, adv, mask = random_case(seed)
    tp, tn = 1.0, 1.3
    out = sspo.policy_loss("sapo", lp, old, adv, mask, tau_pos=tp, tau_neg=tn)
    n, g_seqs, _ = _counts(mask)
    r = torch.exp(lp.detach() - old)
    a = adv[:, None].expand_as(r)
    tau = torch.where(a > 0, torch.tensor(tp, dtype=torch.float64), torch.tensor(tn, dtype=torch.float64))
    sig = torch.sigmoid(tau * (r - 1))
    expected = torch.where(mask, a * 4 * r * sig * (1 - sig) / n.clamp(min=1)[:, None] / g_seqs, 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(2))
def test_sapo_default_value_is_its_own_sigmoid(seed):
    """Without ``gate`` SAPO keeps f(r) = (4/τ)·σ(τ(r − 1)): J = 1/G' Σ_i 1/n_i Σ_t m·f(r)·A."""
    lp, old, adv, mask = random_case(seed)
    out = sspo.policy_loss("sapo", lp, old, adv, mask, tau_pos=1.0, tau_neg=1.3)
    n, g_seqs, _ = _counts(mask)
    r = torch.exp(lp.detach() - old)
    tau = torch.where(adv > 0, torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.3, dtype=torch.float64))[:, None]
    f = 4 / tau * torch.sigmoid(tau * (r - 1))
    value = (torch.where(mask, f * adv[:, None], 0.0).sum(-1) / n.clamp(min=1)).sum() / g_seqs
    torch.testing.assert_close(-out.loss.detach(), value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gate", RATIO_GATES)
@pytest.mark.parametrize(("seed", "tp", "tn"), [(0, 1.0, 1.3), (1, 10.0, 12.0), (2, 0.5, 20.0)])
def test_sapo_ratio_gate_closed_form(gate, seed, tp, tn):
    """With a ratio gate f: J = 1/G' Σ_i 1/n_i Σ_t m·f(r)·A and ∂J/∂logp = (1/G')(1/n)·A·f'(r)·r."""
    lp, old, adv, mask = random_case(seed, drift=1.0)
    out = sspo.policy_loss("sapo", lp, old, adv, mask, tau_pos=tp, tau_neg=tn, gate=gate)
    n, g_seqs, _ = _counts(mask)
    r = torch.exp(lp.detach() - old)
    a = adv[:, None].expand_as(r)
    tau = torch.where(a > 0, torch.tensor(tp, dtype=torch.float64), torch.tensor(tn, dtype=torch.float64))
    per_token = 1 / n.clamp(min=1)[:, None] / g_seqs
    expected = torch.where(mask, a * ratio_f_prime(gate, r, tau) * r * per_token, 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)
    value = torch.where(mask, ratio_f(gate, r, tau) * a * per_token, 0.0).sum()
    torch.testing.assert_close(-out.loss.detach(), value, rtol=1e-12, atol=1e-14)
    weight = torch.where(mask, ratio_f_prime(gate, r, tau), 0.0).sum() / mask.sum()
    torch.testing.assert_close(out.metrics["gate/weight_mean"], weight, rtol=1e-12, atol=1e-14)


def test_sapo_sigmoid_ratio_is_its_default_up_to_a_constant():
    """sigmoid_ratio = SAPO's f + (1 − 2/τ): the same gradient; J differs by mean_i (1 − 2/τ_i)·A_i."""
    lp, old, adv, mask = random_case(4)
    default = sspo.policy_loss("sapo", lp, old, adv, mask, tau_pos=2.0, tau_neg=4.0)
    shifted = sspo.policy_loss("sapo", lp, old, adv, mask, tau_pos=2.0, tau_neg=4.0, gate="sigmoid_ratio")
    torch.testing.assert_close(grad_of(default.loss, lp), grad_of(shifted.loss, lp), rtol=1e-12, atol=1e-14)
    n, g_seqs, _ = _counts(mask)
    shift = torch.where((n > 0) & (adv <= 0), 0.5 * adv, 0.0).sum() / g_seqs  # 1 − 2/τ: 0 at τ=2, ½ at τ=4
    torch.testing.assert_close(default.loss - shifted.loss, shift, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gate", LOG_GATES + RATIO_GATES)
@pytest.mark.parametrize(("seed", "tp", "tn"), [(0, 1.0, 1.7), (1, 1.0, 1.7), (2, 10.0, 12.0), (3, 0.5, 20.0)])
def test_sspo_gradient_is_eq13(gate, seed, tp, tn):
    """∂J/∂logp = (1/G')·A·s·h'(Δ)/n  (the paper's Eq. 13), and the value is 1/G' Σ s·A; a ratio gate
    enters through h(Δ) = log f(e^Δ), h'(Δ) = r·f'(r)/f(r)."""
    lp, old, adv, mask = random_case(seed, drift=1.5)
    if seed == 3:  # log-ratios just inside the ±20 clamp
        lp = (old + torch.where(torch.rand(old.shape, generator=torch.Generator().manual_seed(3)) < 0.5, -19.5, 19.5))
        lp = lp.requires_grad_(True)
    out = sspo.policy_loss("sspo", lp, old, adv, mask, gate=gate, tau_pos=tp, tau_neg=tn)
    n, g_seqs, _ = _counts(mask)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    tau = torch.where(adv > 0, torch.tensor(tp, dtype=torch.float64), torch.tensor(tn, dtype=torch.float64))[:, None]
    s = torch.exp(torch.where(mask, h(gate, delta, tau), 0.0).sum(-1) / n.clamp(min=1))
    expected = torch.where(mask, (adv * s / n.clamp(min=1) / g_seqs)[:, None] * h_prime(gate, delta, tau), 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)
    value = torch.where(n > 0, s * adv, 0.0).sum() / g_seqs
    torch.testing.assert_close(-out.loss.detach(), value, rtol=1e-12, atol=1e-14)
    assert out.metrics["gate/attenuated_frac"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_cispo_gradient_closed_form(seed):
    lp, old, adv, mask = random_case(seed, drift=2.0)
    out = sspo.policy_loss("cispo", lp, old, adv, mask, ratio_max=2.0)
    _, _, tokens = _counts(mask)
    r = torch.exp(lp.detach() - old)
    expected = torch.where(mask, r.clamp(max=2.0) * adv[:, None] / tokens, 0.0)
    assert (r[mask] > 2.0).any()
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sspo.OBJECTIVES)
def test_on_policy_gradient_is_plain_policy_gradient(name):
    """With old == logp every objective's gradient is A·∇logp under its aggregation."""
    lp, _, adv, mask = random_case(7)
    out = sspo.policy_loss(name, lp, lp.detach().clone(), adv, mask)
    n, g_seqs, tokens = _counts(mask)
    mode = sspo.get_objective(name).default_agg_mode
    if mode == "token-mean":
        expected = adv[:, None] / tokens
    elif mode == "seq-mean-token-sum":  # luspo: n_i·A_i/n_i per token
        expected = (adv / g_seqs)[:, None]
    else:
        expected = (adv / n.clamp(min=1) / g_seqs)[:, None]
    torch.testing.assert_close(-grad_of(out.loss, lp), torch.where(mask, expected, 0.0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.metrics["ratio/mean"], torch.tensor(1.0, dtype=torch.float64))
    if name == "sspo":
        for key in ("seq_weight/min", "seq_weight/max", "gate/weight_mean"):
            assert out.metrics[key].item() == 1.0
        assert out.metrics["seq_weight/ess"].item() == pytest.approx(1.0, abs=1e-12)
