"""VESPO, LUSPO, DPPO-TV/KL and the rollout corrections equal their closed forms (float64, docs/objectives.md)."""

import math

import pytest
import torch
from objective_cases import grad_of, random_case

import sspo


def _counts(mask):
    n = mask.sum(-1).to(torch.float64)
    return n, (n > 0).sum().to(torch.float64), n.sum()


def _f64(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", sspo.AGG_MODES)
def test_vespo_gradient_closed_form(seed, mode):
    lp, old, adv, mask = random_case(seed, drift=0.15)
    out = sspo.policy_loss("vespo", lp, old, adv, mask, loss_agg_mode=mode, max_response_length=12)
    n, g_seqs, tokens = _counts(mask)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    log_w = delta.sum(-1).clamp(math.log(1e-8), 20.0)
    k = torch.where(adv >= 0, _f64(2.0), _f64(3.0))
    lam = torch.where(adv >= 0, _f64(3.0), _f64(2.0))
    phi = torch.exp(lam) * torch.exp(log_w) ** k * torch.exp(-lam * torch.exp(log_w))
    per_token = {"token-mean": tokens.expand(len(n)), "seq-mean-token-mean": n.clamp(min=1) * g_seqs,
                 "seq-mean-token-sum": g_seqs.expand(len(n)), "seq-mean-token-sum-norm": 12 * g_seqs.expand(len(n))}[mode]  # fmt: skip
    expected = torch.where(mask, (phi * adv / per_token)[:, None], 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.metrics["seq_weight/max"], phi[n > 0].max(), rtol=1e-12, atol=0)
    assert phi[n > 0].min() < 0.9  # the weight really shapes the gradient here


def test_vespo_weight_is_one_on_policy_and_peaks_at_k_over_lambda():
    """``φ(1) = 1``; ``φ`` is largest at ``w = k/λ`` (2/3 for positive advantages by default)."""
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = _f64([1.0])
    on = sspo.policy_loss("vespo", lp, lp.detach(), adv, mask)
    assert on.metrics["seq_weight/max"].item() == pytest.approx(1.0, abs=1e-15)
    old = torch.full_like(lp, -0.5 * math.log(2 / 3))  # Σ Δ = log(2/3)
    peak = sspo.policy_loss("vespo", lp, old, adv, mask).metrics["seq_weight/max"].item()
    assert peak == pytest.approx(math.e**3 * (2 / 3) ** 2 * math.exp(-2), rel=1e-12)
    for w in (0.5, 0.8, 1.0):
        old_w = torch.full_like(lp, -0.5 * math.log(w))
        assert sspo.policy_loss("vespo", lp, old_w, adv, mask).metrics["seq_weight/max"].item() < peak


@pytest.mark.parametrize("seed", range(4))
def test_luspo_gradient_closed_form(seed):
    lp, old, adv, mask = random_case(seed, drift=0.01)
    el, eh = 3e-3, 4e-3
    out = sspo.policy_loss("luspo", lp, old, adv, mask, eps_low=el, eps_high=eh)
    n, g_seqs, _ = _counts(mask)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    s = torch.exp(delta.sum(-1) / n.clamp(min=1))
    clipped = ((adv > 0) & (s > 1 + eh)) | ((adv < 0) & (s < 1 - el))
    value = (n * torch.minimum(s * adv, s.clamp(1 - el, 1 + eh) * adv)).sum() / g_seqs
    torch.testing.assert_close(-out.loss.detach(), value, rtol=1e-12, atol=1e-14)
    # n_i·(s_i·A_i/n_i): every token of a kept sequence gets s_i·A_i/G'
    expected = torch.where(mask & ~clipped[:, None], (adv * s / g_seqs)[:, None], 0.0)
    torch.testing.assert_close(-grad_of(out.loss, lp), expected, rtol=1e-12, atol=1e-14)
    gspo = sspo.policy_loss("gspo", lp, old, adv, mask, eps_low=el, eps_high=eh)
    torch.testing.assert_close(out.metrics["pg_clipfrac"], gspo.metrics["pg_clipfrac"])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_luspo_refuses_modes_that_undo_its_length_weighting(mode):
    lp, old, adv, mask = random_case(0)
    with pytest.raises(ValueError, match=r"'luspo' scales each sequence's term by its length.*use seq-mean-token-sum"):
        sspo.policy_loss("luspo", lp, old, adv, mask, loss_agg_mode=mode)


def _dppo_expected(name, lp, old, adv, mask, low, high, c):
    p, q = torch.exp(lp.detach()), torch.exp(old)
    a = adv[:, None].expand_as(p)
    if name == "dppo_tv":
        ok = torch.where(a > 0, p - q <= high, p - q >= -low)
    else:
        kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q + 1e-8) / (1 - p + 1e-8))
        ok = torch.where(a > 0, (kl <= high) | (p <= q), (kl <= low) | (p >= q))
    r = p / q
    return ok, torch.where(mask & ok, r.clamp(max=c) * a, 0.0)


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
@pytest.mark.parametrize("seed", range(4))
def test_dppo_gradient_closed_form(name, seed):
    lp, old, adv, mask = random_case(seed, drift=0.6)
    old = old / 4  # probabilities of 0.5–1, so that p − q is large
    lp = (old + (lp.detach() - old * 4) / 2).clamp(max=0).requires_grad_(True)
    low, high, c = (0.1, 0.15, 1.5) if name == "dppo_tv" else (0.03, 0.05, 1.5)
    out = sspo.policy_loss(name, lp, old, adv, mask, clip_ratio=0.5, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)
    ok, term = _dppo_expected(name, lp, old, adv, mask, low, high, c)
    _, _, tokens = _counts(mask)
    torch.testing.assert_close(-grad_of(out.loss, lp), term / tokens, rtol=1e-12, atol=1e-14)
    # the value is the paper's surrogate Σ M·min(r, c)·A / N (not verl's sg[min(r, c)]·A·logp)
    torch.testing.assert_close(-out.loss.detach(), term.sum() / tokens, rtol=1e-12, atol=1e-14)
    masked = mask & ~ok
    assert masked.any() and (mask & ok).any()
    torch.testing.assert_close(out.metrics["pg_clipfrac"], masked.sum() / mask.sum(), rtol=1e-12, atol=0)
    pos = (adv > 0)[:, None]
    torch.testing.assert_close(out.metrics["pg_clipfrac_high"], (masked & pos).sum() / mask.sum(), rtol=1e-12, atol=0)


def test_dppo_thresholds_fall_back_to_clip_ratio():
    lp, old, adv, mask = random_case(1, drift=0.6)
    both = sspo.policy_loss("dppo_tv", lp, old, adv, mask, clip_ratio=0.07)
    explicit = sspo.policy_loss("dppo_tv", lp, old, adv, mask, clip_ratio=0.9, clip_ratio_low=0.07, clip_ratio_high=0.07)
    torch.testing.assert_close(both.loss, explicit.loss, rtol=0, atol=0)


# ----------------------------------------------------------------------------- rollout corrections
def _sampler(old, seed=0, scale=0.3):
    return old + scale * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed), dtype=old.dtype)


@pytest.mark.parametrize("name", ["grpo", "sapo", "cispo", "dppo_tv"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_decoupled_weight_multiplies_token_terms(name, level):
    """``J_corrected = aggregate(ρ·term)``: the gradient of each token is its own uncorrected gradient times ρ."""
    lp, old, adv, mask = random_case(2, drift=0.4)
    roll = _sampler(old, 3, scale=0.25 if level == "sequence" else 0.3)
    out = sspo.policy_loss(name, lp, old, adv, mask, rollout_log_probs=roll, rollout_is=level, rollout_is_threshold=1.5)
    plain = grad_of(sspo.policy_loss(name, lp, old, adv, mask).loss, lp)
    delta = torch.where(mask, old - roll, 0.0)
    rho = torch.exp(delta) if level == "token" else torch.exp(delta.sum(-1, keepdim=True)).expand_as(delta)
    rho = rho.clamp(max=1.5)
    torch.testing.assert_close(grad_of(out.loss, lp), torch.where(mask, plain * rho, 0.0), rtol=1e-12, atol=1e-14)
    assert out.metrics["rollout_corr/is_truncated_frac"] > 0 and (rho[mask] < 1).any()


@pytest.mark.parametrize("name", ["gspo", "gmpo", "sspo"])
def test_sequence_objectives_take_the_mean_token_weight(name):
    lp, old, adv, mask = random_case(4, drift=0.05)
    roll = _sampler(old, 5)
    out = sspo.policy_loss(name, lp, old, adv, mask, rollout_log_probs=roll, rollout_is="token", rollout_is_threshold=2.0)
    plain = grad_of(sspo.policy_loss(name, lp, old, adv, mask).loss, lp)
    rho = torch.where(mask, torch.exp(old - roll).clamp(max=2.0), 0.0)
    mean_rho = rho.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(grad_of(out.loss, lp), plain * mean_rho, rtol=1e-12, atol=1e-14)


def test_vespo_folds_the_weight_into_its_sequence_weight():
    """For VESPO ``log w_i += Σ_t log ρ_t`` before ``φ`` (TRL's and the paper's treatment), not ``ρ·term``."""
    lp, old, adv, mask = random_case(6, drift=0.1)
    roll = _sampler(old, 7, scale=0.1)
    out = sspo.policy_loss("vespo", lp, old, adv, mask, rollout_log_probs=roll, rollout_is="token", rollout_is_threshold=1.5)
    # the same as VESPO without correction, centred on the sampler's log-probs with each token's log-ratio to
    # the proximal policy truncated at log 1.5
    shifted = old - torch.where(mask, (old - roll).clamp(max=math.log(1.5)), 0.0)
    n_tok = mask.sum()
    ref = sspo.policy_loss("vespo", lp, shifted, adv, mask)
    # the weight φ is the same; the REINFORCE term A·logp does not depend on old
    torch.testing.assert_close(out.metrics["seq_weight/mean"], ref.metrics["seq_weight/mean"], rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_of(out.loss, lp), grad_of(ref.loss, lp), rtol=1e-12, atol=1e-14)
    assert n_tok > 0


def test_rejection_drops_tokens_and_rows_from_the_loss_and_its_counts():
    lp, old, adv, mask = random_case(8, drift=0.4)
    roll = _sampler(old, 9, scale=0.4)
    out = sspo.policy_loss("grpo", lp, old, adv, mask, rollout_log_probs=roll, rollout_rs="token_k2",
                           rollout_rs_threshold=0.02)  # fmt: skip
    keep = mask & (0.5 * (old - roll) ** 2 <= 0.02)
    ref = sspo.policy_loss("grpo", lp, old, adv, keep)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    torch.testing.assert_close(grad_of(out.loss, lp), grad_of(ref.loss, lp), rtol=0, atol=0)
    assert out.metrics["rollout_corr/rs_masked_frac"].item() == pytest.approx(1 - keep.sum().item() / mask.sum().item())
    rows = mask.any(-1)
    touched = (mask & ~keep).any(-1)
    assert out.metrics["rollout_corr/rs_seq_masked_frac"].item() == pytest.approx(touched[rows].float().mean().item())


def test_sequence_rejection_removes_whole_rows():
    lp, old, adv, mask = random_case(10, drift=0.3)
    roll = _sampler(old, 11, scale=0.3)
    out = sspo.policy_loss("sspo", lp, old, adv, mask, rollout_log_probs=roll, rollout_rs="seq_mean_k3",
                           rollout_rs_threshold=0.04)  # fmt: skip
    delta = torch.where(mask, old - roll, 0.0)
    k3 = torch.where(mask, torch.expm1(delta) - delta, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
    keep_rows = k3 <= 0.04
    assert (~keep_rows & mask.any(-1)).any() and (keep_rows & mask.any(-1)).any()
    ref = sspo.policy_loss("sspo", lp, old, adv, mask & keep_rows[:, None])
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)


def test_icepop_zeroes_weights_outside_the_band():
    _, old, _, mask = random_case(12)
    roll = _sampler(old, 13, scale=0.5)
    c = sspo.rollout_correction(old, roll, mask, rollout_is="token", rollout_is_threshold="0.5_2")
    r = torch.exp(old - roll)
    inside = (r >= 0.5) & (r <= 2) & mask
    torch.testing.assert_close(c.weights, torch.where(inside, r, 0.0), rtol=1e-12, atol=0)
    assert (mask & ~inside).any()


def test_bypass_mode_centres_the_objective_on_the_sampler():
    lp, _, adv, mask = random_case(14)
    roll = _sampler(lp.detach(), 15)
    nan = torch.full_like(roll, float("nan"))
    out = sspo.policy_loss("grpo", lp, nan, adv, mask, rollout_log_probs=roll, bypass_mode=True,
                           rollout_is="token", check_finite=False)  # fmt: skip
    ref = sspo.policy_loss("grpo", lp, roll, adv, mask)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    assert "rollout_corr/is_mean" in out.metrics  # the weight is reported, not applied


def test_engine_weights_are_taken_as_given():
    lp, old, adv, mask = random_case(16)
    w_tok = torch.rand(mask.shape, dtype=torch.float64) + 0.5
    out = sspo.policy_loss("grpo", lp, old, adv, mask, rollout_is_weights=torch.where(mask, w_tok, float("nan")))
    plain = grad_of(sspo.policy_loss("grpo", lp, old, adv, mask).loss, lp)
    torch.testing.assert_close(grad_of(out.loss, lp), torch.where(mask, plain * w_tok, 0.0), rtol=1e-12, atol=1e-14)
    w_seq = torch.rand(mask.shape[0], dtype=torch.float64) + 0.5
    seq = sspo.policy_loss("sspo", lp, old, adv, mask, rollout_is_weights=w_seq)
    plain = grad_of(sspo.policy_loss("sspo", lp, old, adv, mask).loss, lp)
    torch.testing.assert_close(grad_of(seq.loss, lp), plain * w_seq[:, None], rtol=1e-12, atol=1e-14)


def test_nan_in_masked_slots_of_the_sampler_never_leaks():
    lp, old, adv, mask = random_case(17)
    roll = torch.where(mask, _sampler(old, 18), float("nan"))
    for name in sspo.OBJECTIVES:
        out = sspo.policy_loss(name, lp, old, adv, mask, rollout_log_probs=roll, rollout_is="sequence",
                               rollout_rs="token_k1", rollout_rs_threshold=3.0)  # fmt: skip
        g = grad_of(out.loss, lp)
        assert torch.isfinite(out.loss) and torch.isfinite(g).all() and (g[~mask] == 0).all()
        assert all(torch.isfinite(v) for v in out.metrics.values()), name


def test_correction_on_policy_changes_nothing():
    lp, old, adv, mask = random_case(19)
    for name in sspo.OBJECTIVES:
        out = sspo.policy_loss(name, lp, old, adv, mask, rollout_log_probs=old.clone(), rollout_is="token",
                               rollout_rs="token_k3", rollout_rs_threshold=1e-6)  # fmt: skip
        ref = sspo.policy_loss(name, lp, old, adv, mask)
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kwargs,message", [
    (dict(rollout_is="tokens"), r"rollout_is='tokens' is not one of None, 'token', 'sequence'"),
    (dict(rollout_is="token", rollout_is_threshold="2_1"), r"rollout_is_threshold='2_1': the lower bound is above"),
    (dict(rollout_is="token", rollout_is_threshold=-1.0), r"rollout_is_threshold bounds must be finite and > 0"),
    (dict(rollout_is="token", rollout_is_threshold="x"), r"rollout_is_threshold='x' is not a number"),
    (dict(rollout_rs="token_k4", rollout_rs_threshold=1.0), r"rollout_rs: unknown criterion 'token_k4'"),
    (dict(rollout_rs="token_k2"), r"rollout_rs needs rollout_rs_threshold"),
    (dict(rollout_rs="token_k2,token_k3", rollout_rs_threshold="1,2,3"), r"3 values for 2 criteria"),
    (dict(rollout_rs="token_k2", rollout_rs_threshold="0.1_1"), r"a k2/k3 criterion takes one upper bound"),
    (dict(rollout_is_batch_normalize="yes", rollout_is="token"), r"rollout_is_batch_normalize must be True or False"),
])  # fmt: skip
def test_bad_correction_options_name_themselves(kwargs, message):
    lp, old, adv, mask = random_case(0)
    with pytest.raises(ValueError, match=message):
        sspo.policy_loss("grpo", lp, old, adv, mask, rollout_log_probs=old, **kwargs)


def test_corrections_need_the_sampler_log_probs():
    lp, old, adv, mask = random_case(0)
    for kwargs in (dict(rollout_is="token"), dict(bypass_mode=True)):
        with pytest.raises(ValueError, match="need rollout_log_probs"):
            sspo.policy_loss("grpo", lp, old, adv, mask, **kwargs)
    with pytest.raises(ValueError, match="rollout_log_probs must have the shape of log_probs"):
        sspo.policy_loss("grpo", lp, old, adv, mask, rollout_log_probs=old[:, :3])
    with pytest.raises(ValueError, match="not both"):
        sspo.policy_loss("grpo", lp, old, adv, mask, rollout_log_probs=old, rollout_is_weights=torch.ones_like(old))
    with pytest.raises(ValueError, match="rollout_log_probs has non-finite"):
        sspo.policy_loss("grpo", lp, old, adv, mask, rollout_log_probs=torch.full_like(old, float("nan")))
    with pytest.raises(ValueError, match="rollout_is_weights must be finite and >= 0"):
        sspo.policy_loss("grpo", lp, old, adv, mask, rollout_is_weights=-torch.ones_like(old))


# ----------------------------------------------------------------------------- M2PO
def _algorithm_1(delta, mask, tau):
    """The paper's Algorithm 1, literally: mask the largest M2 while the mean M2 of the kept tokens > τ."""
    keep = mask.clone()
    m2 = delta**2
    while keep.any() and m2[keep].mean() > tau:
        idx = torch.where(keep, m2, torch.full_like(m2, -1.0)).flatten().argmax()
        keep.view(-1)[idx] = False
    return keep


def _areal_mask(delta, mask, tau):
    """AReaL's rule as its source reads: sort descending, mask the largest until the mean of the rest is
    strictly below τ, always keeping the smallest token."""
    m2 = (delta**2)[mask]
    s, order = torch.sort(m2, descending=True)
    suffix = torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0]) / torch.arange(len(s), 0, -1, dtype=s.dtype)
    below = (suffix < tau).nonzero()
    k = int(below[0]) if len(below) else len(s) - 1
    kept = torch.ones_like(m2, dtype=torch.bool)
    kept[order[:k]] = False
    out = torch.zeros_like(mask)
    out[mask] = kept
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [0.01, 0.04, 0.2])
def test_m2po_mask_is_algorithm_1_and_its_gradient_the_masked_surrogate(seed, tau):
    lp, old, adv, mask = random_case(seed, drift=0.3)
    out = sspo.policy_loss("m2po", lp, old, adv, mask, m2_threshold=tau)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    keep = _algorithm_1(delta, mask, tau)
    _, _, tokens = _counts(mask)
    r = torch.exp(delta)
    torch.testing.assert_close(-out.loss.detach(), torch.where(keep, r * adv[:, None], 0.0).sum() / tokens, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(-grad_of(out.loss, lp), torch.where(keep, r * adv[:, None], 0.0) / tokens, rtol=1e-12, atol=1e-14)
    assert out.metrics["m2po/m2_kept"] <= tau + 1e-15
    frac = 1 - keep.sum() / mask.sum()
    torch.testing.assert_close(out.metrics["m2po/masked_frac"], frac.float(), rtol=1e-6, atol=0)
    if tau < 0.2:
        assert 0 < frac < 1  # the bound binds on these batches


def test_m2po_masks_only_outliers_and_nothing_under_the_bound():
    lp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 4, dtype=torch.float64)
    old[0, 1] = -2.0  # one outlier: Δ = 2, M2 = 4
    old[1, :] = 0.1  # Δ = −0.1 everywhere else in row 1: M2 = 0.01
    mask = torch.ones(2, 4, dtype=torch.bool)
    adv = _f64([1.0, -1.0])
    out = sspo.policy_loss("m2po", lp, old, adv, mask, m2_threshold=0.04)
    g = grad_of(out.loss, lp)
    assert g[0, 1] == 0 and (g.abs().sum() - g[0, 1].abs()) > 0 and (g != 0).sum() == 7
    calm = sspo.policy_loss("m2po", lp, torch.full_like(old, 0.1), adv, mask, m2_threshold=0.04)
    assert calm.metrics["m2po/masked_frac"].item() == 0.0 and calm.metrics["update/effective_ratio"].item() == 1.0


def test_m2po_masks_everything_when_even_one_token_is_over_the_bound():
    lp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    old = torch.full_like(lp, -1.0).detach()
    out = sspo.policy_loss("m2po", lp, old, _f64([1.0]), torch.ones(1, 3, dtype=torch.bool), m2_threshold=0.5)
    assert out.metrics["m2po/masked_frac"].item() == 1.0 and (grad_of(out.loss, lp) == 0).all()


def test_m2po_differs_from_areal_only_at_the_boundary():
    """AReaL stops when the mean is strictly below τ and keeps at least one token; Algorithm 1 stops at ≤ τ.
    Away from those edges the masks agree."""
    for seed in range(6):
        lp, old, adv, mask = random_case(seed, drift=0.3)
        delta = torch.where(mask, lp.detach() - old, 0.0)
        keep = _algorithm_1(delta, mask, 0.04)
        assert torch.equal(keep, _areal_mask(delta, mask, 0.04))
    # exactly at the bound: two tokens with M2 = τ — the paper keeps both, AReaL masks one
    delta = torch.tensor([[0.25, -0.25]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert _algorithm_1(delta, mask, 0.0625).sum() == 2
    assert _areal_mask(delta, mask, 0.0625).sum() == 1
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    out = sspo.policy_loss("m2po", lp, -delta, _f64([1.0]), mask, m2_threshold=0.0625)
    assert out.metrics["m2po/masked_frac"].item() == 0.0


def test_m2po_mask_belongs_to_the_batch_it_sees():
    """Split into micro-batches, each gets its own mask (as in AReaL, which masks per micro-batch); with
    global normalisers the losses then sum to the full-batch loss with the per-part masks."""
    lp, old, adv, mask = random_case(3, batch=8, drift=0.3)
    norms = {"global_num_tokens": mask.sum()}
    total, expected = 0, 0
    for idx in (slice(0, 4), slice(4, 8)):
        total = total + sspo.policy_loss("m2po", lp[idx], old[idx], adv[idx], mask[idx], **norms).loss
        delta = torch.where(mask[idx], lp[idx].detach() - old[idx], 0.0)
        keep = _algorithm_1(delta, mask[idx], 0.04)
        expected = expected + torch.where(keep, torch.exp(delta) * adv[idx, None], 0.0).sum()
    torch.testing.assert_close(-total.detach(), expected / mask.sum(), rtol=1e-12, atol=1e-14)
    full = sspo.policy_loss("m2po", lp, old, adv, mask).loss
    assert abs(full.item() - total.item()) > 1e-6


def test_a_non_finite_old_log_prob_is_named_as_such_with_a_correction():
    lp, old, adv, mask = random_case(0)
    bad = old.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="old_log_probs has non-finite"):
        sspo.policy_loss("grpo", lp, bad, adv, mask, rollout_log_probs=old, rollout_is="token")


def test_a_finite_batch_whose_log_ratios_sum_past_the_float_range_passes_the_finite_check():
    """The check sums δ (a sum is finite only if every term is) and looks closer only when it is not."""
    mask = torch.tensor([[True, True, True, False]])
    old = torch.tensor([[3e38, 3e38, 3e38, float("nan")]])
    roll = torch.tensor([[-3e38, -3e38, -3e38, float("inf")]])  # δ overflows to inf; each input is finite
    c = sspo.rollout_correction(old, roll, mask, rollout_is="token", check_finite=True)
    assert torch.equal(c.weights, torch.tensor([[2.0, 2.0, 2.0, 0.0]]))  # δ clamped to 20, then truncated
    for bad, name in ((roll, "rollout_log_probs"), (old, "log_probs")):
        bad[0, 1] = float("nan")
        with pytest.raises(ValueError, match=f"{name} has non-finite"):
            sspo.rollout_correction(old, roll, mask, rollout_is="token", check_finite=True)
        bad[0, 1] = 3e38 if bad is old else -3e38


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("threshold", [1.5, "0.7_1.4"])
@pytest.mark.parametrize("normalize", [False, True])
def test_correction_weights_and_metrics_are_their_definitions(level, threshold, normalize):
    """Weights and metrics equal their plain ``[B, T]`` definitions (each row's weight spread on its tokens)."""
    _, old, _, mask = random_case(20, batch=16, length=24)
    roll = _sampler(old, 21, scale=0.3)
    given = mask.clone()
    rs = {"rollout_rs": "token_k1,seq_mean_k3,seq_max_k2", "rollout_rs_threshold": "2.0,0.05,0.25"}
    c = sspo.rollout_correction(old, roll, mask, rollout_is=level, rollout_is_threshold=threshold,
                                rollout_is_batch_normalize=normalize, **rs)  # fmt: skip
    assert torch.equal(mask, given)  # the caller's mask is left as it was
    delta = torch.where(mask, old - roll, 0.0)
    raw = torch.exp(delta) if level == "token" else torch.exp(delta.sum(-1, keepdim=True)).expand_as(delta)
    raw = torch.where(mask, raw, 0.0)
    n = mask.sum()
    if isinstance(threshold, float):
        w = raw.clamp(max=threshold)
        assert c.metrics["rollout_corr/is_truncated_frac"].item() == (raw > threshold).sum().item() / n.item()
    else:
        inside = (raw >= 0.7) & (raw <= 1.4)
        w = torch.where(inside, raw, 0.0)
        assert c.metrics["rollout_corr/is_masked_frac"].item() == (mask & ~inside).sum().item() / n.item()
        assert (mask & ~inside).any()
    if normalize:
        unit = w if level == "token" else w.amax(-1)
        w = w / unit[mask if level == "token" else mask.any(-1)].mean()
    torch.testing.assert_close(c.weights, w, rtol=1e-15, atol=0)
    torch.testing.assert_close(c.metrics["rollout_corr/is_mean"], w[mask].mean(), rtol=1e-15, atol=0)
    torch.testing.assert_close(c.metrics["rollout_corr/is_min"], w[mask].min(), rtol=1e-15, atol=0)
    torch.testing.assert_close(c.metrics["rollout_corr/is_max"], w.max(), rtol=1e-15, atol=0)
    k3 = (torch.expm1(delta) - delta).sum(-1) / mask.sum(-1).clamp(min=1)
    max_k2 = (0.5 * delta**2).amax(-1)
    keep = mask & (delta.abs() <= math.log(2.0)) & ((k3 <= 0.05) & (max_k2 <= 0.25))[:, None]
    assert torch.equal(c.mask, keep) and (mask & ~keep).any() and keep.any()
    assert c.metrics["rollout_corr/rs_masked_frac"].item() == pytest.approx(1 - keep.sum().item() / n.item(), abs=1e-15)
    touched = (mask & ~keep).any(-1)[mask.any(-1)]
    assert c.metrics["rollout_corr/rs_seq_masked_frac"].item() == touched.float().mean().item()


@pytest.mark.parametrize("bounds", ["2.0", "0.6_1.25"])
def test_token_k1_bounds_are_inclusive(bounds):
    """``token_k1`` keeps ``−δ`` in ``[log L, log U]``, bounds included: symmetric (``L = 1/U``) or not."""
    lo, hi = (0.5, 2.0) if bounds == "2.0" else (0.6, 1.25)
    delta = torch.tensor([[-math.log(hi), -math.log(lo), -math.log(hi) - 1e-9, -math.log(lo) + 1e-9, 0.0]],
                         dtype=torch.float64)  # fmt: skip
    mask = torch.ones_like(delta, dtype=torch.bool)
    c = sspo.rollout_correction(delta, torch.zeros_like(delta), mask, rollout_rs="token_k1", rollout_rs_threshold=bounds)
    assert c.mask.tolist() == [[True, True, False, False, True]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_m2po_breaks_ties_by_position_as_algorithm_1_does(dtype, seed):
    """Many equal ``M2`` (Δ on a grid of 1/8, so every sum is exact): of equal values the earlier token is
    masked first, as the literal loop's argmax does; in float32 too (the sort orders the values' bits)."""
    lp, old, adv, mask = random_case(seed, batch=8, length=16, drift=0.4)
    delta = torch.where(mask, torch.round((lp.detach() - old) * 8) / 8, 0.0)
    lp = (old + delta).to(dtype).requires_grad_(True)
    old, adv = old.to(dtype), adv.to(dtype)
    delta = torch.where(mask, lp.detach() - old, 0.0)
    for tau in (0.02, 0.05):
        out = sspo.policy_loss("m2po", lp, old, adv, mask, m2_threshold=tau)
        keep = _algorithm_1(delta.double(), mask, tau)
        m2 = (delta.double() ** 2)[mask]
        assert (m2 > tau).sum() > len(set(m2[m2 > tau].tolist()))  # there are ties above the bound
        expected = torch.where(keep, torch.exp(delta) * adv[:, None], 0.0) / mask.sum()
        torch.testing.assert_close(-grad_of(out.loss, lp), expected.to(dtype))
        assert out.metrics["m2po/masked_frac"].item() == pytest.approx(1 - keep.sum().item() / mask.sum().item())
        dropped, n = mask & ~keep, mask.sum().item()
        assert out.metrics["pg_clipfrac_low"].item() == pytest.approx((dropped & (delta < 0)).sum().item() / n)
        assert out.metrics["pg_clipfrac_high"].item() == pytest.approx((dropped & (delta >= 0)).sum().item() / n)
        kept_m2 = (delta**2)[keep]
        torch.testing.assert_close(out.metrics["m2po/m2_kept"], kept_m2.sum() / max(len(kept_m2), 1))
