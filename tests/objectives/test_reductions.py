"""SSPO reduces to unclipped GSPO (identity gate) and to GMPO (sign-aware hard clip); GSPO-token = GSPO."""

import pytest
import torch
from objective_cases import TOKEN_OBJECTIVES, grad_of, random_case

import sspo
from sspo.objectives import Gate


@pytest.mark.parametrize("seed", range(3))
def test_sspo_identity_gate_is_unclipped_gspo(seed):
    lp, old, adv, mask = random_case(seed)
    identity = Gate("identity", lambda d, tau: d)
    ours = sspo.policy_loss("sspo", lp, old, adv, mask, gate=identity)
    gspo = sspo.policy_loss("gspo", lp, old, adv, mask, eps_low=0.999999, eps_high=1e9)
    torch.testing.assert_close(ours.loss, gspo.loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_of(ours.loss, lp), grad_of(gspo.loss, lp), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("clip", [0.2, 0.4])
def test_sspo_sign_aware_hard_clip_is_gmpo(seed, clip):
    lp, old, adv, mask = random_case(seed, drift=0.8)
    pos = Gate("hard_clip_pos", lambda d, tau: d.clamp(max=clip))
    neg = Gate("hard_clip_neg", lambda d, tau: d.clamp(min=-clip))
    ours = sspo.policy_loss("sspo", lp, old, adv, mask, gate=pos, gate_neg=neg)
    gmpo = sspo.policy_loss("gmpo", lp, old, adv, mask, clip_low=clip, clip_high=clip)
    torch.testing.assert_close(ours.loss, gmpo.loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_of(ours.loss, lp), grad_of(gmpo.loss, lp), rtol=1e-12, atol=1e-14)
    assert gmpo.metrics["pg_clipfrac"] > 0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_gspo_token_equals_gspo(seed, per_token_adv):
    lp, old, adv, mask = random_case(seed, drift=0.02)
    adv_in = adv[:, None].expand(mask.shape).clone() if per_token_adv else adv
    kw = {"eps_low": 5e-3, "eps_high": 6e-3}
    seq = sspo.policy_loss("gspo", lp, old, adv_in, mask, **kw)
    tok = sspo.policy_loss("gspo_token", lp, old, adv_in, mask, **kw)
    torch.testing.assert_close(seq.loss, tok.loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_of(seq.loss, lp), grad_of(tok.loss, lp), rtol=1e-12, atol=1e-14)


def _modes(name):
    return list(sspo.get_objective(name).agg_modes)


BATCH_DEPENDENT = ("m2po",)
"""Objectives whose token mask depends on the whole batch they see (tested in test_offpolicy_objectives.py)."""


@pytest.mark.parametrize("name", [n for n in sspo.OBJECTIVES if n not in BATCH_DEPENDENT])
def test_micro_batches_with_global_normalisers_match_full_batch(name):
    lp, old, adv, mask = random_case(3, batch=8)
    ref = torch.randn(mask.shape, dtype=torch.float64) * 0.1 + old
    ent = torch.rand(mask.shape, dtype=torch.float64)
    for mode in _modes(name):
        kw = {"loss_agg_mode": mode, "kl_coef": 0.1, "ref_log_probs": ref, "max_response_length": 12}
        full = sspo.policy_loss(name, lp, old, adv, mask, entropy=ent, entropy_coef=0.01, **kw)
        g_full = grad_of(full.loss, lp)
        norms = {"global_num_tokens": mask.sum(), "global_num_seqs": int(mask.any(-1).sum())}
        total = 0
        for idx in (slice(0, 3), slice(3, 5), slice(5, 8)):
            total = total + sspo.policy_loss(
                name, lp[idx], old[idx], adv[idx], mask[idx], entropy=ent[idx], entropy_coef=0.01,
                **{**kw, "ref_log_probs": ref[idx]}, **norms,
            ).loss  # fmt: skip
        torch.testing.assert_close(total, full.loss, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad_of(total, lp), g_full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", TOKEN_OBJECTIVES)
def test_aggregation_modes_have_their_formulas(name):
    lp, _, adv, mask = random_case(5)
    old = lp.detach().clone()
    n = mask.sum(-1).double()
    g_seqs = (n > 0).sum()
    a = adv[:, None].expand(mask.shape)
    # on-policy token terms: grpo r·A = A; sapo f(1)·A = (2/τ)·A; cispo sg[1]·A·logp
    term = {"grpo": a, "sapo": 2.0 / torch.where(a > 0, torch.tensor(1.0, dtype=a.dtype), torch.tensor(1.05, dtype=a.dtype)) * a, "cispo": a * lp.detach()}[name]
    term = torch.where(mask, term, 0.0)
    expected = {
        "token-mean": term.sum() / n.sum(),
        "seq-mean-token-mean": (term.sum(-1) / n.clamp(min=1)).sum() / g_seqs,
        "seq-mean-token-sum": term.sum() / g_seqs,
        "seq-mean-token-sum-norm": term.sum() / g_seqs / 20,
    }
    for mode, value in expected.items():
        out = sspo.policy_loss(name, lp, old, adv, mask, loss_agg_mode=mode, max_response_length=20)
        torch.testing.assert_close(-out.loss.detach(), value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_values(estimator):
    lp, old, adv, mask = random_case(2)
    ref = old + 0.3
    base = sspo.policy_loss("sspo", lp, old, adv, mask)
    out = sspo.policy_loss("sspo", lp, old, adv, mask, kl_coef=0.5, ref_log_probs=ref, kl_estimator=estimator)
    x = ref - lp.detach()
    k = {"k1": -x, "k2": 0.5 * x**2, "k3": torch.exp(x) - 1 - x}[estimator]
    n = mask.sum(-1).double()
    kl = (torch.where(mask, k, 0.0).sum(-1) / n.clamp(min=1)).sum() / (n > 0).sum()
    torch.testing.assert_close(out.metrics["kl"], kl, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.loss - base.loss, 0.5 * kl, rtol=1e-12, atol=1e-14)
