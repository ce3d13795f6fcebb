"""Tests of the bias–variance study: exact enumeration, drift calibration, estimators and the run."""

from __future__ import annotations

import argparse
import csv
import math

import pytest
import torch

import sspo
from sspo.experiments.bias_variance import policy as pol
from sspo.experiments.bias_variance.estimators import gradient_metrics, m2po_group_mask, per_batch_gradients
from sspo.experiments.bias_variance.objectives import (
    DEFAULT_OBJECTIVES,
    REFERENCE,
    VARIANTS,
    ObjectiveVariant,
)
from sspo.experiments.bias_variance.study import BiasVarianceConfig, add_arguments, main, run_study

CORE_VARIANTS = [label for label, v in VARIANTS.items() if v.objective is not None]


def _policy(vocab=3, length=3, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    theta = pol.init_logits(vocab, length, scale, gen)
    sequences = pol.all_sequences(vocab, length)
    rewards = pol.digit_sum_reward(sequences, target=round(0.6 * length * (vocab - 1)), tolerance=1)
    return theta, sequences, rewards, gen


def _sample(theta, sequences, rewards, num_batches, group_size, gen):
    probs = pol.sequence_logprobs(theta, sequences).exp()
    index = pol.sample_indices(probs, num_batches * group_size, gen)
    length = sequences.shape[-1]
    return sequences[index].reshape(num_batches, group_size, length), rewards[index].reshape(
        num_batches, group_size
    )


def _assert_within_standard_errors(samples: torch.Tensor, expected: torch.Tensor, z: float = 5.0):
    """Every coordinate of ``mean(samples)`` lies within ``z`` standard errors of ``expected``."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    gap = (mean - expected.reshape(-1)).abs()
    assert bool((gap <= z * se + 1e-12).all()), (
        f"max |gap|/se = {float((gap / se.clamp_min(1e-30)).max()):.2f}"
    )
    # and the deviations are of the size the standard errors predict (no systematic offset)
    used = se > 0
    mean_z2 = float(((mean - expected.reshape(-1))[used] / se[used]).pow(2).mean())
    assert mean_z2 < 3.0, mean_z2


# ----------------------------------------------------------------------------- enumeration
@pytest.mark.parametrize(("vocab", "length"), [(2, 1), (3, 3), (4, 5)])
def test_enumeration_lists_every_sequence_once_and_probabilities_sum_to_one(vocab, length):
    theta, sequences, _, _ = _policy(vocab, length, scale=2.0)
    assert sequences.shape == (vocab**length, length)
    assert len({tuple(s.tolist()) for s in sequences}) == vocab**length
    total = pol.sequence_logprobs(theta, sequences).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-12)


def test_stacked_tables_score_each_batch_with_its_own_table():
    theta, sequences, _, gen = _policy()
    tables = torch.stack([theta, theta + 1.0 * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)])
    batches = sequences[torch.randint(len(sequences), (2, 5), generator=gen)]
    stacked = pol.token_logprobs(tables, batches)
    for m in range(2):
        torch.testing.assert_close(stacked[m], pol.token_logprobs(tables[m], batches[m]))


def test_exact_gradient_matches_finite_differences():
    theta, sequences, rewards, _ = _policy()
    _, grad = pol.exact_gradient(theta, sequences, rewards)
    eps = 1e-6
    for index in [(0, 3, 1), (1, 0, 2), (2, 2, 0), (2, 1, 1)]:
        bump = torch.zeros_like(theta)
        bump[index] = eps
        plus = (pol.sequence_logprobs(theta + bump, sequences).exp() * rewards).sum()
        minus = (pol.sequence_logprobs(theta - bump, sequences).exp() * rewards).sum()
        assert float(grad[index]) == pytest.approx(float(plus - minus) / (2 * eps), abs=1e-8)


def test_exact_gradient_matches_on_policy_monte_carlo_reinforce():
    """∇J by enumeration vs the mean of R(y)·∇log π(y) over 300k responses drawn token by token."""
    vocab, length, num = 3, 3, 300_000
    theta, _, _, gen = _policy(vocab, length, seed=1)
    sequences_all = pol.all_sequences(vocab, length)
    target = round(0.6 * length * (vocab - 1))
    _, exact = pol.exact_gradient(theta, sequences_all, pol.digit_sum_reward(sequences_all, target, 1))

    # independent sampler and analytic score function: ∂log π/∂θ[t, prev] = onehot(y_t) − softmax(θ[t, prev])
    probs_table = torch.softmax(theta, dim=-1)
    previous = torch.full((num,), vocab)
    tokens, scores = [], torch.zeros(num, *theta.shape, dtype=theta.dtype)
    for t in range(length):
        p = probs_table[t, previous]
        y = torch.multinomial(p, 1, generator=gen).squeeze(1)
        scores[torch.arange(num), t, previous] += torch.nn.functional.one_hot(y, vocab).to(p.dtype) - p
        tokens.append(y)
        previous = y
    rewards = ((torch.stack(tokens, 1).sum(1) - target).abs() <= 1).to(theta.dtype)
    per_sample = (rewards[:, None, None, None] * scores).reshape(num, -1)
    _assert_within_standard_errors(per_sample, exact)
    # the test has power: the Monte Carlo error is small next to the gradient itself
    assert float((per_sample.mean(0) - exact.reshape(-1)).norm()) < 0.05 * float(exact.norm())


# ----------------------------------------------------------------------------- drift
@pytest.mark.parametrize("target", [0.01, 0.2, 1.0])
def test_calibrate_drift_hits_the_requested_kl(target):
    theta, sequences, _, gen = _policy(4, 4)
    direction = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
    delta, kl = pol.calibrate_drift(theta, direction / direction.norm(), sequences, target)
    assert delta > 0
    assert kl == pytest.approx(target, rel=1e-3)
    assert pol.sequence_kl(theta, theta + delta * direction / direction.norm(), sequences) == pytest.approx(
        kl
    )


def test_calibrate_drift_zero_target_means_on_policy():
    theta, sequences, _, gen = _policy()
    assert pol.calibrate_drift(theta, torch.ones_like(theta), sequences, 0.0) == (0.0, 0.0)


# ----------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("label", [*CORE_VARIANTS, REFERENCE])
def test_stacked_gradients_equal_per_batch_policy_loss_gradients(label):
    """One backward over M stacked batches gives exactly each batch's own gradient (off-policy)."""
    theta_old, sequences, rewards_all, gen = _policy(3, 4)
    theta = theta_old + 0.3 * torch.randn(theta_old.shape, generator=gen, dtype=theta_old.dtype)
    batches, rewards = _sample(theta_old, sequences, rewards_all, 3, 4, gen)
    advantages = sspo.group_advantages(rewards.reshape(-1), group_size=4)[0].reshape(3, 4)
    variant = VARIANTS[label]
    grads, _ = per_batch_gradients(variant, theta, theta_old, batches, rewards, advantages)
    for m in range(3):
        leaf = theta.clone().requires_grad_(True)
        logp = pol.token_logprobs(leaf, batches[m])
        old = pol.token_logprobs(theta_old, batches[m])
        if variant.objective is None:
            weights = (logp.sum(-1) - old.sum(-1)).detach().exp()
            loo = (rewards[m].sum() - rewards[m]) / 3
            loss = -(weights * (rewards[m] - loo) * logp.sum(-1)).mean()
        else:
            mask = torch.ones_like(logp, dtype=torch.bool)
            loss = sspo.policy_loss(
                variant.objective, logp, old, advantages[m], mask, **variant.hyperparameters
            ).loss
        (expected,) = torch.autograd.grad(loss, leaf)
        torch.testing.assert_close(grads[m], -expected.reshape(-1), rtol=1e-9, atol=1e-12)


def test_core_objectives_give_identical_estimates_on_policy():
    """At θ = θ_old every ratio is 1 and every objective's gradient is (1/G) Σ_i A_i (1/L) Σ_t ∇log π
    (LUSPO's token sum: L times that)."""
    theta, sequences, rewards_all, gen = _policy(3, 4)
    batches, rewards = _sample(theta, sequences, rewards_all, 5, 4, gen)
    advantages = sspo.group_advantages(rewards.reshape(-1), group_size=4)[0].reshape(5, 4)
    reference, _ = per_batch_gradients(VARIANTS["grpo"], theta, theta, batches, rewards, advantages)
    assert float(reference.abs().max()) > 0
    for label in CORE_VARIANTS:
        variant = VARIANTS[label]
        mode = variant.loss_agg_mode or sspo.get_objective(variant.objective).default_agg_mode
        scale = 4 if mode == "seq-mean-token-sum" else 1
        grads, _ = per_batch_gradients(variant, theta, theta, batches, rewards, advantages)
        torch.testing.assert_close(grads, scale * reference, rtol=1e-9, atol=1e-12)


def test_every_core_objective_has_a_variant_in_the_default_set():
    """All but gspo_token, whose estimate equals GSPO's here (next test)."""
    covered = {VARIANTS[label].objective for label in DEFAULT_OBJECTIVES}
    assert set(sspo.OBJECTIVES) - {"gspo_token"} <= covered, sorted(set(sspo.OBJECTIVES) - covered)
    assert {"vespo", "luspo", "dppo_tv", "dppo_kl", "m2po"} <= set(DEFAULT_OBJECTIVES)


def test_gspo_token_equals_gspo_with_sequence_advantages_off_policy():
    """With one advantage per sequence (as here) GSPO-token's gradient is GSPO's, so the study omits it."""
    theta_old, sequences, rewards_all, gen = _policy(3, 4, seed=7)
    theta = theta_old + 0.3 * torch.randn(theta_old.shape, generator=gen, dtype=theta_old.dtype)
    batches, rewards = _sample(theta_old, sequences, rewards_all, 5, 4, gen)
    advantages = sspo.group_advantages(rewards.reshape(-1), group_size=4)[0].reshape(5, 4)
    wide = {"eps_low": 0.2, "eps_high": 0.2}  # a range that clips some sequences and not others
    gspo, _ = per_batch_gradients(ObjectiveVariant("g", "gspo", wide), theta, theta_old, batches, rewards, advantages)
    token, _ = per_batch_gradients(ObjectiveVariant("t", "gspo_token", wide), theta, theta_old, batches, rewards,
                                   advantages)  # fmt: skip
    assert float(gspo.abs().max()) > 0 and float((gspo == 0).all(1).double().mean()) < 1
    torch.testing.assert_close(token, gspo, rtol=1e-9, atol=1e-12)


# ------------------------------------------------- REINFORCE-form and masked objectives, off-policy
def _m2po_keep_literal(m2: list[float], tau: float) -> list[bool]:
    """M2PO's Algorithm 1 as written: mask the largest M2 while the kept tokens' mean exceeds τ."""
    keep = [True] * len(m2)
    while any(keep) and sum(v for v, k in zip(m2, keep) if k) / sum(keep) > tau:
        top = max((v, -j) for j, (v, k) in enumerate(zip(m2, keep)) if k)
        keep[-top[1]] = False
    return keep


def _closed_form_coefficient(label, logp, old, adv):
    """``c[i, t]`` with ``g = 1/(G·L) Σ_{i,t} c[i, t] ∇log π(y_t)`` for one group, from the papers' formulas."""
    delta, a = logp - old, adv[:, None].expand_as(logp)
    ratio, p, q = delta.exp(), logp.exp(), old.exp()
    if label == "cispo":
        return ratio.clamp(max=sspo.get_objective("cispo").defaults["ratio_max"]) * a
    if label == "vespo":
        w = delta.sum(-1, keepdim=True).exp()
        hp = sspo.get_objective("vespo").defaults
        pos = a >= 0
        k = torch.where(pos, a.new_tensor(hp["k_pos"]), a.new_tensor(hp["k_neg"]))
        lam = torch.where(pos, a.new_tensor(hp["lambda_pos"]), a.new_tensor(hp["lambda_neg"]))
        return torch.exp(lam) * w**k * torch.exp(-lam * w) * a
    if label in ("dppo_tv", "dppo_kl"):  # gradient M·min(r, c)·A·∇log π
        hp = sspo.get_objective(label).defaults
        delta_max, c = hp["clip_ratio"], hp["clip_ratio_c"]
        if label == "dppo_tv":
            valid = torch.where(a > 0, p - q <= delta_max, p - q >= -delta_max)
        else:
            kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q + 1e-8) / (1 - p + 1e-8))
            valid = torch.where(a > 0, (kl <= delta_max) | (p <= q), (kl <= delta_max) | (p >= q))
        return valid * ratio.clamp(max=c) * a
    if label == "m2po":  # ∇(r·A) = r·A·∇log π on the kept tokens
        tau = sspo.get_objective("m2po").defaults["m2_threshold"]
        keep = torch.tensor(_m2po_keep_literal((delta**2).reshape(-1).tolist(), tau)).reshape(delta.shape)
        return keep * ratio * a
    raise AssertionError(label)


@pytest.mark.parametrize("label", ["cispo", "vespo", "dppo_tv", "dppo_kl", "m2po"])
def test_reinforce_form_and_masked_estimates_match_their_closed_forms_off_policy(label):
    """Off-policy, each group's estimate is 1/(G·L) Σ_{i,t} c[i,t] ∇log π with c from the paper's
    formula (detached weight, mask; the core's default hyperparameters), computed here without the
    core. CISPO's and VESPO's loss values are not surrogates of J; only gradients enter the study."""
    G, L = 6, 4
    theta_old, sequences, rewards_all, gen = _policy(3, L, seed=4)
    drift = 2.0 if label == "cispo" else 0.6  # CISPO's cap r ≤ 5 binds only on a large drift
    theta = theta_old + drift * torch.randn(theta_old.shape, generator=gen, dtype=theta_old.dtype)
    batches, rewards = _sample(theta_old, sequences, rewards_all, 4, G, gen)
    advantages = sspo.group_advantages(rewards.reshape(-1), group_size=G)[0].reshape(4, G)
    grads, _ = per_batch_gradients(VARIANTS[label], theta, theta_old, batches, rewards, advantages)
    shares = []
    for m in range(4):
        leaf = theta.clone().requires_grad_(True)
        logp = pol.token_logprobs(leaf, batches[m])
        old = pol.token_logprobs(theta_old, batches[m])
        coef = _closed_form_coefficient(label, logp.detach(), old, advantages[m])
        (expected,) = torch.autograd.grad((coef * logp).sum() / (G * L), leaf)
        torch.testing.assert_close(grads[m], expected.reshape(-1), rtol=1e-9, atol=1e-12)
        plain = (logp.detach() - old).exp() * advantages[m][:, None]  # the unweighted ratio·A
        shares.append(float(((coef - plain).abs() > 1e-9).double().mean()))
    assert max(shares) > 0.03  # the weight or mask binds on this drift: the check has power


def test_m2po_mask_is_per_group_not_over_the_stacked_batches():
    from sspo.objectives.m2po import second_moment_mask

    gen = torch.Generator().manual_seed(5)
    scales = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)[:, None, None]
    log_ratio = scales * torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    keep = m2po_group_mask(log_ratio, 0.04)
    for m in range(3):
        literal = _m2po_keep_literal((log_ratio[m] ** 2).reshape(-1).tolist(), 0.04)
        assert keep[m].reshape(-1).tolist() == literal
        full = torch.ones(4, 5, dtype=torch.bool)
        assert torch.equal(keep[m], full & ~second_moment_mask(log_ratio[m] ** 2, full, 0.04))  # it returns the masked
    assert bool(keep[0].all()) and 0 < int(keep[2].sum()) < 20  # small drift: all kept; large: some
    joint = ~second_moment_mask(log_ratio.reshape(12, 5) ** 2, torch.ones(12, 5, dtype=torch.bool), 0.04)
    assert not torch.equal(joint.reshape(3, 4, 5), keep)  # one mask over all groups would differ


def test_luspo_is_gspo_scaled_by_the_length_off_policy():
    """LUSPO = GSPO's sequence term times n_i, summed over sequences: L× GSPO's estimate at fixed length L."""
    theta_old, sequences, rewards_all, gen = _policy(3, 4, seed=6)
    theta = theta_old + 0.3 * torch.randn(theta_old.shape, generator=gen, dtype=theta_old.dtype)
    batches, rewards = _sample(theta_old, sequences, rewards_all, 5, 4, gen)
    advantages = sspo.group_advantages(rewards.reshape(-1), group_size=4)[0].reshape(5, 4)
    gspo, _ = per_batch_gradients(VARIANTS["gspo"], theta, theta_old, batches, rewards, advantages)
    luspo, _ = per_batch_gradients(VARIANTS["luspo"], theta, theta_old, batches, rewards, advantages)
    assert float(gspo.abs().max()) > 0
    torch.testing.assert_close(luspo, 4 * gspo, rtol=1e-9, atol=1e-12)


def test_on_policy_grpo_with_raw_rewards_and_token_sum_is_unbiased():
    """On-policy, min(r·A, clip(r)·A) has gradient A·∇logp, so with A = R and seq-mean-token-sum the
    estimate is REINFORCE, (1/G) Σ_i R_i ∇log π(y_i), whose expectation is ∇J."""
    theta, sequences, rewards_all, gen = _policy(3, 3, seed=2)
    _, exact = pol.exact_gradient(theta, sequences, rewards_all)
    batches, rewards = _sample(theta, sequences, rewards_all, 40_000, 4, gen)
    variant = ObjectiveVariant("grpo-reinforce", "grpo", loss_agg_mode="seq-mean-token-sum")
    grads, _ = per_batch_gradients(variant, theta, theta, batches, rewards, rewards)
    _assert_within_standard_errors(grads, exact)


def test_reference_estimator_is_unbiased_off_policy():
    theta_old, sequences, rewards_all, gen = _policy(3, 3, seed=3)
    direction = torch.randn(theta_old.shape, generator=gen, dtype=theta_old.dtype)
    delta, _ = pol.calibrate_drift(theta_old, direction, sequences, 0.3)
    theta = theta_old + delta * direction
    _, exact = pol.exact_gradient(theta, sequences, rewards_all)
    batches, rewards = _sample(theta_old, sequences, rewards_all, 40_000, 4, gen)
    grads, _ = per_batch_gradients(VARIANTS[REFERENCE], theta, theta_old, batches, rewards, rewards)
    _assert_within_standard_errors(grads, exact)


# ----------------------------------------------------------------------------- metrics
def test_gradient_metrics_of_scaled_exact_gradient():
    true = torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)
    m = gradient_metrics(0.5 * true.expand(10, 3), true)
    assert m["cosine"] == pytest.approx(1.0)
    assert m["cosine_raw"] == pytest.approx(1.0)
    assert m["cosine_single"] == pytest.approx(1.0)
    assert m["projection"] == pytest.approx(0.5)
    assert m["variance"] == 0.0
    assert m["bias2"] == pytest.approx(0.25)
    assert m["mse"] == pytest.approx(0.25)
    assert m["nmse"] == pytest.approx(0.0, abs=1e-12)
    assert m["nmse_update"] == pytest.approx(0.0, abs=1e-12)


def test_gradient_metrics_with_orthogonal_noise():
    """g = ∇J ± v with v ⊥ ∇J: unbiased, tr Σ = ‖v‖²·M/(M−1), cos of one batch = ‖∇J‖/‖∇J ± v‖."""
    true = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 2.0], dtype=torch.float64)
    grads = torch.stack([true + v, true - v] * 50)
    m = gradient_metrics(grads, true, update_groups=4)
    trace = 4.0 * 100 / 99
    # this sample's mean happens to be exactly ∇J, so removing the expected noise tr Σ/M from ‖ḡ‖²
    # over-corrects: the noise-corrected cosine is 1/sqrt(1 − tr Σ/M), the plain one exactly 1
    assert m["cosine"] == pytest.approx(1 / math.sqrt(1 - trace / 100))
    assert m["cosine_raw"] == pytest.approx(1.0)
    assert m["projection"] == pytest.approx(1.0)
    assert m["variance"] == pytest.approx(trace)
    assert m["bias2"] == pytest.approx(-trace / 100)  # unbiased estimate of 0
    assert m["mse"] == pytest.approx(4.0)  # ‖±v‖² over ‖∇J‖²
    assert m["cosine_single"] == pytest.approx(1 / math.sqrt(5))
    assert m["snr"] == pytest.approx(1 / trace)
    assert m["nmse"] == pytest.approx(1 - 1 / (1 - trace / 100 + trace))
    assert m["nmse_update"] == pytest.approx(1 - 1 / (1 - trace / 100 + trace / 4))


# ----------------------------------------------------------------------------- the study
def _tiny_config(**overrides) -> BiasVarianceConfig:
    values = dict(vocab=3, lengths=(2, 3), kl_targets=(0.0, 0.1), group_size=4, num_batches=64, policies=2)
    values.update(overrides)
    return BiasVarianceConfig(**values)


def test_run_study_writes_tables_and_plots_with_finite_values(tmp_path):
    config = _tiny_config()
    rows = run_study(config, tmp_path, progress=False)
    assert len(rows) == len(config.objectives) * 2 * 2
    with open(tmp_path / "bias_variance.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for column in ("objective", "length", "kl_target", "kl_seq", "cosine", "projection", "variance",
                   "mse", "bias2", "nmse", "nmse_update", "snr", "cosine_single"):  # fmt: skip
        assert column in table[0]
    for row in table:
        for column in ("cosine", "projection", "variance", "mse", "nmse", "nmse_update", "kl_seq"):
            assert math.isfinite(float(row[column])), (row["objective"], column)
        assert float(row["kl_seq"]) == pytest.approx(float(row["kl_target"]), rel=1e-3, abs=1e-12)
    with open(tmp_path / "bias_variance_raw.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) * config.policies
    assert "#### cosine, L = 3" in (tmp_path / "bias_variance.md").read_text()
    for metric in ("cosine", "projection", "nmse_update", "snr"):
        assert (tmp_path / f"bias_variance_{metric}.png").stat().st_size > 1000
    # on-policy every core objective estimates the same gradient
    on_policy = {
        r["cosine"] for r in rows if r["kl_target"] == 0 and r["objective"] != REFERENCE and r["length"] == 3
    }
    assert max(on_policy) - min(on_policy) < 1e-9


def test_run_study_is_reproducible_and_kl_unit_token_scales_the_drift():
    config = _tiny_config(
        lengths=(3,), kl_targets=(0.05,), objectives=("sspo-arctan", "grpo"), num_batches=16
    )
    assert run_study(config, progress=False) == run_study(config, progress=False)
    per_token = run_study(_tiny_config(**{**config.__dict__, "kl_unit": "token"}), progress=False)
    assert per_token[0]["kl_seq"] == pytest.approx(3 * 0.05, rel=1e-3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab", 1),
        ("kl_targets", (-0.1,)),
        ("drift", "sideways"),
        ("objectives", ("ppo",)),
        ("group_size", 1),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"BiasVarianceConfig.{field}"):
        BiasVarianceConfig(**{field: value})


def test_cli_main_runs_a_tiny_study(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--out", str(tmp_path), "--vocab", "3", "--lengths", "2", "--kl", "0", "0.05", "--batches", "8",
         "--policies", "1", "--objectives", "sspo-arctan", "gspo", "--no-plots", "--quiet"]
    )  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "bias_variance.csv").exists()
    assert not list(tmp_path.glob("*.png"))
    assert "bias-variance study done" in capsys.readouterr().out
