"""The off-policy toolbox against the engines' own code, on the same float64 tensors.

- ``dppo_tv``/``dppo_kl`` against verl 0.9.1's ``dppo_tv``/``dppo_kl`` losses, in every aggregation mode;
- every ``rollout_is``/``rollout_rs`` option against verl's ``rollout_corr_helper`` (weights and mask), and
  the corrected loss against verl's loss given those weights and that mask, decoupled and bypass;
- ``vespo``/``luspo`` against TRL 1.16's ``GRPOTrainer`` loss, VESPO with TRL's vLLM corrections too.

Value and gradient agree to 1e-10; where we differ from an anchor on purpose the test pins the difference
(docs/objectives.md explains it).
"""

import importlib.util
import math

import pytest
import torch

if importlib.util.find_spec("verl") is None or importlib.util.find_spec("trl") is None:
    pytest.skip("verl and TRL are not installed", allow_module_level=True)

from integration_cases import actor_config, grad_of, random_batch, token_advantages
from integration_cases import trl_loss as trl_case_loss
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_rejection_mask

import sspo

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
TOL = 1e-10


def assert_same(theirs, ours, leaf, tol=TOL):
    assert theirs.item() == pytest.approx(ours.item(), abs=tol)
    torch.testing.assert_close(grad_of(theirs, leaf), grad_of(ours, leaf), atol=tol, rtol=0)


def verl_loss(name, log_probs, old, adv, mask, mode, weights=None, **cfg):
    loss, _ = get_policy_loss_fn(name)(
        old, log_probs, token_advantages(adv, mask), mask.long(), mode, actor_config(**cfg),
        rollout_is_weights=weights,
    )  # fmt: skip
    return loss


def drifted(seed, drift=0.8, empty_row=False):
    """A batch whose probabilities really move (log-probs near 0 so that |p − q| is large)."""
    log_probs, old, adv, mask = random_batch(seed=seed, drift=drift, empty_row=empty_row)
    old = old / 3
    log_probs = (old + drift * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed + 100),
                                           dtype=torch.float64)).clamp(max=0).detach().requires_grad_(True)  # fmt: skip
    return log_probs, old, adv, mask


# ----------------------------------------------------------------------------- DPPO vs verl
def assert_same_gradient_paper_value(theirs, ours, leaf, tol=TOL):
    """verl writes DPPO as ``sg[min(r, c)]·A·logp``; sspo as the paper's surrogate ``M·min(r, c)·A`` (its value
    is checked in tests/objectives) with the same gradient. Gradients agree to 1e-10; values differ."""
    torch.testing.assert_close(grad_of(theirs, leaf), grad_of(ours, leaf), atol=tol, rtol=0)
    assert abs(theirs.item() - ours.item()) > 1e-6


def dppo_pair(name, log_probs, old, adv, mask, mode, **kw):
    theirs = verl_loss(name, log_probs, old, adv, mask, mode, **kw)
    ours = sspo.policy_loss(name, log_probs, old, adv, mask, loss_agg_mode=mode, **kw)
    return theirs, ours


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
@pytest.mark.parametrize("mode", MODES)
def test_dppo_gradient_equals_verl_and_its_value_is_the_paper_surrogate(name, mode):
    log_probs, old, adv, mask = drifted(3)
    kw = dict(clip_ratio=0.1, clip_ratio_low=0.08, clip_ratio_high=0.12, clip_ratio_c=1.2)
    theirs, ours = dppo_pair(name, log_probs, old, adv, mask, mode, **kw)
    assert_same_gradient_paper_value(theirs, ours.loss, log_probs)
    # the trust region and the truncation both act on this batch
    assert 0 < ours.metrics["pg_clipfrac"] < 1 and ours.metrics["dppo/truncated_frac"] > 0


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_dppo_defaults_are_the_authors(name):
    """sspo's defaults are the DPPO authors' verl settings (δ_TV = 0.15, δ_KL = 0.05, ``clip_ratio_c = 1e4``);
    verl's ``ActorConfig`` would give δ = 0.2 and ``clip_ratio_c = 3`` unless they are set."""
    log_probs, old, adv, mask = drifted(4)
    clip = {"dppo_tv": 0.15, "dppo_kl": 0.05}[name]
    assert sspo.get_objective(name).defaults["clip_ratio"] == clip
    theirs = verl_loss(name, log_probs, old, adv, mask, "token-mean", clip_ratio=clip, clip_ratio_low=clip,
                       clip_ratio_high=clip, clip_ratio_c=1e4)  # fmt: skip
    ours = sspo.policy_loss(name, log_probs, old, adv, mask).loss
    g_ours = grad_of(ours, log_probs)
    torch.testing.assert_close(grad_of(theirs, log_probs), g_ours, atol=TOL, rtol=0)
    verl_defaults = verl_loss(name, log_probs, old, adv, mask, "token-mean")
    assert (grad_of(verl_defaults, log_probs) - g_ours).abs().max() > 1e-3


# ----------------------------------------------------------------------------- rollout corrections vs verl
IS_OPTIONS = [("token", 2.0), ("token", "0.5_2.0"), ("sequence", 5.0), ("sequence", "0.2_5.0"), ("token", 1.5)]
RS_OPTIONS = [
    ("token_k1", "0.6_1.6"), ("token_k1", 1.6), ("token_k2", 0.05), ("token_k3", 0.05),
    ("seq_sum_k1", "0.6_1.6"), ("seq_sum_k2", 0.3), ("seq_sum_k3", 0.3),
    ("seq_mean_k1", "0.93_1.07"), ("seq_mean_k2", 0.03), ("seq_mean_k3", 0.03),
    ("seq_max_k2", 0.1), ("seq_max_k3", 0.1), ("token_k1,seq_mean_k3", "0.5_2,0.04"),
]  # fmt: skip


def sampler_of(old, seed, scale=0.3):
    return old + scale * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed), dtype=old.dtype)


def verl_correction(old, rollout, mask, **options):
    proto, new_mask, _ = compute_rollout_correction_and_rejection_mask(old, rollout, mask.long(), **options)
    weights = None if proto is None else proto.batch["rollout_is_weights"]
    return weights, new_mask.bool()


@pytest.mark.parametrize("level,threshold", IS_OPTIONS)
@pytest.mark.parametrize("normalize", [False, True])
def test_rollout_is_weights_equal_verl(level, threshold, normalize):
    _, old, _, mask = random_batch(seed=5, drift=0.5, empty_row=True)
    rollout = sampler_of(old, 6, scale=0.15 if level == "sequence" else 0.5)
    opts = dict(rollout_is=level, rollout_is_threshold=threshold, rollout_is_batch_normalize=normalize)
    theirs, _ = verl_correction(old, rollout, mask, **opts)
    ours = sspo.rollout_correction(old, rollout, mask, **opts)
    torch.testing.assert_close(torch.where(mask, theirs, 0.0), ours.weights, atol=1e-12, rtol=1e-12)
    assert ours.weights[mask].std() > 0.05  # the weights are not all 1


@pytest.mark.parametrize("rs,threshold", RS_OPTIONS)
def test_rollout_rs_mask_equals_verl(rs, threshold):
    _, old, _, mask = random_batch(seed=7, drift=0.5, empty_row=True)
    rollout = sampler_of(old, 8)
    _, theirs = verl_correction(old, rollout, mask, rollout_is=None, rollout_rs=rs, rollout_rs_threshold=threshold)
    ours = sspo.rollout_correction(old, rollout, mask, rollout_rs=rs, rollout_rs_threshold=threshold)
    assert torch.equal(theirs & mask, ours.mask)
    kept = int(ours.mask.sum())
    assert 0 < kept < int(mask.sum())  # the criterion rejects some tokens here, not all
    assert ours.metrics["rollout_corr/rs_masked_frac"].item() == pytest.approx(1 - kept / int(mask.sum()))


@pytest.mark.parametrize("name,verl_name,kw", [
    ("grpo", "vanilla", dict(eps_low=0.2, eps_high=0.28)),
    ("dppo_tv", "dppo_tv", dict(clip_ratio=0.15)),
    ("gspo_token", "gspo", dict(eps_low=3e-3, eps_high=4e-3)),
])  # fmt: skip
@pytest.mark.parametrize("level,threshold", [("token", 1.8), ("sequence", "0.3_3.0")])
def test_decoupled_loss_equals_verl_with_its_weights_and_mask(name, verl_name, kw, level, threshold):
    """Decoupled mode: the objective is centred on ``old`` (the proximal policy); verl's weights from
    ``old − rollout`` multiply its terms and its rejection mask replaces the response mask."""
    log_probs, old, adv, mask = drifted(9) if name == "dppo_tv" else random_batch(seed=9, drift=0.05 if name == "gspo_token" else 0.5)
    rollout = sampler_of(old, 10, scale=0.1)
    opts = dict(rollout_is=level, rollout_is_threshold=threshold, rollout_rs="token_k2", rollout_rs_threshold=0.004)
    weights, new_mask = verl_correction(old, rollout, mask, **opts)
    cfg = {"vanilla": dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=1e9), "dppo_tv": dict(clip_ratio=0.15),
           "gspo": dict(clip_ratio_low=3e-3, clip_ratio_high=4e-3)}[verl_name]  # fmt: skip
    mode = sspo.get_objective(name).default_agg_mode
    theirs = verl_loss(verl_name, log_probs, old, adv, new_mask, mode, weights=weights, **cfg)
    ours = sspo.policy_loss(name, log_probs, old, adv, mask, rollout_log_probs=rollout, **opts, **kw)
    if name == "dppo_tv":  # the paper's value, verl's gradient
        assert_same_gradient_paper_value(theirs, ours.loss, log_probs)
    else:
        assert_same(theirs, ours.loss, log_probs)
    assert ours.metrics["rollout_corr/rs_masked_frac"] > 0


def bypass_config(correction, **cfg):
    from verl.trainer.config.algorithm import RolloutCorrectionConfig
    from verl.workers.config.actor import PolicyLossConfig

    options = {k: v for k, v in correction.items() if v is not None}
    loss = PolicyLossConfig(loss_mode="bypass_mode", rollout_correction=RolloutCorrectionConfig(**options))
    return actor_config(policy_loss=loss, **cfg)


def test_gspo_pools_token_weights_over_the_sequence_where_verl_weights_each_token():
    """verl's GSPO is the ``gspo_token`` form: a token weight ``w_t`` scales token ``t``'s gradient alone.
    sspo's ``gspo`` (one term per sequence, like ``sspo`` and ``gmpo``) multiplies the sequence term by the
    mean weight ``1/n_i Σ_t w_t``: the same loss value, the gradient spread evenly over the sequence."""
    log_probs, old, adv, mask = random_batch(seed=9, drift=0.05)
    rollout = sampler_of(old, 10, scale=0.1)
    opts = dict(rollout_is="token", rollout_is_threshold=1.8)
    weights, _ = verl_correction(old, rollout, mask, **opts)
    theirs = verl_loss("gspo", log_probs, old, adv, mask, "seq-mean-token-mean", weights=weights,
                       clip_ratio_low=3e-3, clip_ratio_high=4e-3)  # fmt: skip
    ours = sspo.policy_loss("gspo", log_probs, old, adv, mask, eps_low=3e-3, eps_high=4e-3, rollout_log_probs=rollout, **opts)
    assert theirs.item() == pytest.approx(ours.loss.item(), abs=TOL)
    g_theirs, g_ours = grad_of(theirs, log_probs), grad_of(ours.loss, log_probs)
    torch.testing.assert_close(g_theirs.sum(-1), g_ours.sum(-1), atol=TOL, rtol=0)  # per-sequence totals agree
    assert (g_theirs - g_ours).abs().max() > 1e-3


@pytest.mark.parametrize("rs", [None, "seq_mean_k3"])
def test_bypass_mode_equals_verl_bypass_ppo_clip(rs):
    """Bypass: the ratio is taken to the sampler itself, the weights are metrics only, rejection applies
    (computed from the current policy against the sampler)."""
    log_probs, _, adv, mask = random_batch(seed=11, drift=0.5)
    rollout = sampler_of(log_probs.detach(), 12)
    correction = dict(rollout_is="token", rollout_is_threshold=2.0, rollout_rs=rs, rollout_rs_threshold=0.05)
    config = bypass_config({"loss_type": "ppo_clip", **correction}, clip_ratio_low=0.2, clip_ratio_high=0.28,
                           clip_ratio_c=1e9)  # fmt: skip
    theirs, _ = get_policy_loss_fn("bypass_mode")(rollout, log_probs, token_advantages(adv, mask),
                                                  mask.long(), "token-mean", config)  # fmt: skip
    junk = torch.full_like(rollout, float("nan"))  # bypass mode never reads old_log_probs
    ours = sspo.policy_loss("grpo", log_probs, junk, adv, mask, loss_agg_mode="token-mean", eps_low=0.2,
                            eps_high=0.28, rollout_log_probs=rollout, bypass_mode=True, check_finite=False,
                            **correction)  # fmt: skip
    assert_same(theirs, ours.loss, log_probs)


def test_verl_bypass_reinforce_is_cispo_in_bypass_mode():
    """verl's bypass ``loss_type="reinforce"`` with token TIS at ``U`` is ``cispo`` with ``ratio_max=U``
    centred on the sampler."""
    log_probs, _, adv, mask = random_batch(seed=13, drift=0.5)
    rollout = sampler_of(log_probs.detach(), 14, scale=0.5)
    config = bypass_config({"loss_type": "reinforce", "rollout_is": "token", "rollout_is_threshold": 1.5})
    theirs, _ = get_policy_loss_fn("bypass_mode")(rollout, log_probs, token_advantages(adv, mask),
                                                  mask.long(), "token-mean", config)  # fmt: skip
    ours = sspo.policy_loss("cispo", log_probs, rollout, adv, mask, ratio_max=1.5)
    assert_same(theirs, ours.loss, log_probs)
    assert ours.metrics["pg_clipfrac_high"] > 0


# ----------------------------------------------------------------------------- VESPO, LUSPO vs TRL
def trl_loss(loss_type, log_probs, old, adv, mask, *, eps=(3e-4, 4e-4), **kw):
    """:func:`integration_cases.trl_loss` with GSPO's clip as the default ``(ε_low, ε_high)``."""
    return trl_case_loss(loss_type, log_probs, old, adv, mask, eps_low=eps[0], eps_high=eps[1], **kw)


def trl_vllm_ratio(old, sampler, mask, mode, clip_min=None, clip_max=2.0):
    """TRL 1.16's ``importance_sampling_ratio`` (``_generate_and_score_completions``), written out: the
    mode's ratio of the trainer's old log-probs to the sampler's, truncated or masked to [clip_min, clip_max]."""
    diff = (old - sampler) * mask
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return ratio.clamp(min=clip_min, max=clip_max)
    lo = -math.inf if clip_min is None else clip_min
    return ratio.masked_fill((ratio < lo) | (ratio > clip_max), 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_vespo_equals_trl(seed):
    log_probs, old, adv, mask = random_batch(seed=seed, drift=0.15)
    theirs = trl_loss("vespo", log_probs, old, adv, mask)
    ours = sspo.policy_loss("vespo", log_probs, old, adv, mask)
    assert_same(theirs, ours.loss, log_probs)
    phi = ours.metrics["seq_weight/min"], ours.metrics["seq_weight/max"]
    assert phi[0] < 0.9 and phi[1] > 1.0  # the gamma weight attenuates some sequences and boosts others


def test_vespo_shape_parameters_equal_trl():
    log_probs, old, adv, mask = random_batch(seed=4, drift=0.15)
    shape = dict(k_pos=1.5, lambda_pos=2.0, k_neg=4.0, lambda_neg=3.5)
    theirs = trl_loss("vespo", log_probs, old, adv, mask, vespo=tuple(shape.values()))
    assert_same(theirs, sspo.policy_loss("vespo", log_probs, old, adv, mask, **shape).loss, log_probs)


@pytest.mark.parametrize("trl_mode,ours", [
    ("token_truncate", dict(rollout_is="token", rollout_is_threshold=2.0)),
    ("token_mask", dict(rollout_is="token", rollout_is_threshold="0.5_2.0")),
])  # fmt: skip
def test_vespo_with_trl_vllm_correction_folds_the_weight_into_w(trl_mode, ours):
    """TRL's VESPO multiplies the sampler correction into the sequence weight ``w`` before ``φ``; sspo does
    the same for ``vespo`` (and multiplies it into the terms for every other objective)."""
    log_probs, old, adv, mask = random_batch(seed=5, drift=0.1)
    sampler = sampler_of(old, 15, scale=0.4)
    clip_min = 0.5 if trl_mode == "token_mask" else None
    ratio = trl_vllm_ratio(old, sampler, mask, trl_mode, clip_min=clip_min, clip_max=2.0)
    theirs = trl_loss("vespo", log_probs, old, adv, mask, is_ratio=ratio)
    mine = sspo.policy_loss("vespo", log_probs, old, adv, mask, rollout_log_probs=sampler, **ours)
    assert_same(theirs, mine.loss, log_probs)
    plain = sspo.policy_loss("vespo", log_probs, old, adv, mask).loss
    assert abs(plain.item() - mine.loss.item()) > 1e-3


@pytest.mark.parametrize("trl_mode,ours", [
    ("token_truncate", dict(rollout_is="token", rollout_is_threshold=2.0)),
    ("token_mask", dict(rollout_is="token", rollout_is_threshold="0.5_2.0")),
    ("sequence_truncate", dict(rollout_is="sequence", rollout_is_threshold=2.0)),
    ("sequence_mask", dict(rollout_is="sequence", rollout_is_threshold="0.5_2.0")),
])  # fmt: skip
def test_trl_vllm_modes_are_rollout_is_options(trl_mode, ours):
    """TRL's four ``vllm_importance_sampling_mode``s (with ``clip_min`` unset for truncation, as TRL's
    default) are ``rollout_is``/``rollout_is_threshold`` options; here on TRL's DAPO (token-mean GRPO) loss."""
    log_probs, old, adv, mask = random_batch(seed=6, drift=0.4)
    sampler = sampler_of(old, 16, scale=0.1 if trl_mode.startswith("sequence") else 0.4)
    clip_min = 0.5 if trl_mode.endswith("mask") else None
    ratio = trl_vllm_ratio(old, sampler, mask, trl_mode, clip_min=clip_min, clip_max=2.0)
    theirs = trl_loss("dapo", log_probs, old, adv, mask, eps=(0.2, 0.28), is_ratio=ratio)
    mine = sspo.policy_loss("grpo", log_probs, old, adv, mask, loss_agg_mode="token-mean", eps_low=0.2,
                            eps_high=0.28, rollout_log_probs=sampler, **ours)  # fmt: skip
    assert_same(theirs, mine.loss, log_probs)


def test_luspo_equals_trl_without_empty_rows():
    log_probs, old, adv, mask = random_batch(seed=7, drift=0.02)
    theirs = trl_loss("luspo", log_probs, old, adv, mask, level="sequence", eps=(3e-3, 4e-3))
    ours = sspo.policy_loss("luspo", log_probs, old, adv, mask, eps_low=3e-3, eps_high=4e-3)
    assert_same(theirs, ours.loss, log_probs)
    assert ours.metrics["pg_clipfrac"] > 0


def test_trl_luspo_counts_empty_rows_in_its_mean():
    """TRL divides by every row, empty ones too; sspo by the non-empty rows ``G'``, as for every objective."""
    log_probs, old, adv, mask = random_batch(seed=7, drift=0.02, empty_row=True)
    theirs = trl_loss("luspo", log_probs, old, adv, mask, level="sequence", eps=(3e-3, 4e-3))
    ours = sspo.policy_loss("luspo", log_probs, old, adv, mask, eps_low=3e-3, eps_high=4e-3).loss
    rows, nonempty = mask.shape[0], int(mask.any(-1).sum())
    assert nonempty < rows
    assert theirs.item() == pytest.approx(ours.item() * nonempty / rows, abs=TOL)
