"""Our objectives against verl 0.9.1's own policy losses on the same float64 tensors.

Where verl's formula matches docs/objectives.md the value and gradient agree to 1e-12; where it differs the
test pins the difference (and docs/integrations.md states it).
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("verl") is None:
    pytest.skip("verl is not installed", allow_module_level=True)

from integration_cases import actor_config, grad_of, random_batch, token_advantages
from verl.trainer.ppo.core_algos import get_policy_loss_fn

import sspo

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def verl_loss(name, log_probs, old, adv, mask, mode, **cfg):
    loss, _ = get_policy_loss_fn(name)(
        old, log_probs, token_advantages(adv, mask), mask, mode, actor_config(**cfg)
    )
    return loss


def assert_same(a, b, leaf, tol=1e-12):
    assert a.item() == pytest.approx(b.item(), abs=tol)
    assert torch.allclose(grad_of(a, leaf), grad_of(b, leaf), atol=tol, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_grpo_equals_verl_vanilla_with_dual_clip_off(mode):
    log_probs, old, adv, mask = random_batch(seed=1, drift=0.6)
    theirs = verl_loss("vanilla", log_probs, old, adv, mask, mode, clip_ratio_low=0.2, clip_ratio_high=0.28,
                       clip_ratio_c=1e9)  # fmt: skip
    ours = sspo.policy_loss("grpo", log_probs, old, adv, mask, loss_agg_mode=mode, eps_low=0.2, eps_high=0.28)
    assert_same(theirs, ours.loss, log_probs)


def test_verl_vanilla_default_dual_clip_caps_negative_advantage_tokens_at_ratio_3():
    """verl's default ``clip_ratio_c=3``: for ``A < 0`` the token term is ``max(min-clip term, 3·A)``, so
    tokens with ``r > 3`` lose their gradient. Those are the only tokens where it differs from GRPO."""
    log_probs, old, adv, mask = random_batch(seed=2, drift=1.5)
    adv = adv.abs().neg()
    theirs = verl_loss("vanilla", log_probs, old, adv, mask, "token-mean")
    ours = sspo.policy_loss("grpo", log_probs, old, adv, mask, loss_agg_mode="token-mean").loss
    dual = (torch.exp(log_probs - old) > 3.0) & mask
    assert 0 < int(dual.sum()) < int(mask.sum())
    diff = grad_of(theirs, log_probs) - grad_of(ours, log_probs)
    assert torch.all(diff[~dual].abs() < 1e-12) and torch.all(diff[dual].abs() > 1e-6)
    assert theirs.item() < ours.item()


@pytest.mark.parametrize("objective", ["gspo", "gspo_token"])
def test_gspo_equals_verl_gspo_at_seq_mean_token_mean(objective):
    log_probs, old, adv, mask = random_batch(seed=4, drift=0.02)
    hp = dict(eps_low=3e-3, eps_high=4e-3)
    theirs = verl_loss("gspo", log_probs, old, adv, mask, "seq-mean-token-mean", clip_ratio_low=3e-3,
                       clip_ratio_high=4e-3)  # fmt: skip
    ours = sspo.policy_loss(objective, log_probs, old, adv, mask, **hp).loss
    assert_same(theirs, ours, log_probs)


def test_verl_gspo_with_its_default_token_mean_weights_sequences_by_length():
    """verl applies GSPO with any ``loss_agg_mode`` (its default ``token-mean``); docs/objectives.md (and sspo)
    refuse a token-level mode for a sequence-level objective."""
    log_probs, old, adv, mask = random_batch(seed=4, drift=0.02)
    kw = dict(clip_ratio_low=3e-3, clip_ratio_high=4e-3)
    token_mean = verl_loss("gspo", log_probs, old, adv, mask, "token-mean", **kw)
    seq_mean = verl_loss("gspo", log_probs, old, adv, mask, "seq-mean-token-mean", **kw)
    assert abs(token_mean.item() - seq_mean.item()) > 1e-4
    with pytest.raises(ValueError, match="sequence-level"):
        sspo.policy_loss("gspo", log_probs, old, adv, mask, loss_agg_mode="token-mean")


def test_gmpo_equals_verl_geo_mean_without_empty_rows():
    log_probs, old, adv, mask = random_batch(seed=6, drift=0.5)
    theirs = verl_loss(
        "geo_mean", log_probs, old, adv, mask, "token-mean", clip_ratio_low=0.4, clip_ratio_high=0.3
    )
    ours = sspo.policy_loss("gmpo", log_probs, old, adv, mask, clip_low=0.4, clip_high=0.3).loss
    assert_same(theirs, ours, log_probs)


def test_verl_geo_mean_ignores_agg_mode_and_global_batch_info():
    """verl's ``geo_mean`` returns ``mean`` over the micro-batch's rows, empty rows included, whatever
    ``loss_agg_mode`` and ``global_batch_info`` say: an empty row scales the loss by ``G'/B`` and the
    micro-batch losses of a mini-batch do not sum to the mini-batch loss (k micro-batches give k× it)."""
    log_probs, old, adv, mask = random_batch(seed=6, drift=0.5, empty_row=True)
    theirs = verl_loss("geo_mean", log_probs, old, adv, mask, "seq-mean-token-mean")
    ours = sspo.policy_loss("gmpo", log_probs, old, adv, mask, clip_low=0.2, clip_high=0.2).loss
    n_rows, n_valid = mask.shape[0], int(mask.any(-1).sum())
    assert theirs.item() == pytest.approx(ours.item() * n_valid / n_rows, abs=1e-12)
    log_probs, old, adv, mask = random_batch(seed=6, drift=0.5, batch=8)
    info = dict(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=8)
    halves = (slice(0, 4), slice(4, 8))
    whole = verl_loss("geo_mean", log_probs, old, adv, mask, "seq-mean-token-mean")
    parts = [verl_loss("geo_mean", log_probs[s], old[s], adv[s], mask[s], "seq-mean-token-mean",
                       global_batch_info=info) for s in halves]  # fmt: skip
    assert sum(parts).item() == pytest.approx(2 * whole.item(), abs=1e-12)


def test_sapo_equals_verl_sapo_at_seq_mean_token_mean():
    log_probs, old, adv, mask = random_batch(seed=8, drift=0.6)
    theirs = verl_loss("sapo", log_probs, old, adv, mask, "seq-mean-token-mean", tau_pos=0.8, tau_neg=1.4)
    ours = sspo.policy_loss("sapo", log_probs, old, adv, mask, tau_pos=0.8, tau_neg=1.4).loss
    assert_same(theirs, ours, log_probs)


def test_verl_sapo_hard_codes_seq_mean_token_mean():
    log_probs, old, adv, mask = random_batch(seed=8, drift=0.6)
    theirs = verl_loss("sapo", log_probs, old, adv, mask, "token-mean")
    ours_token = sspo.policy_loss("sapo", log_probs, old, adv, mask, loss_agg_mode="token-mean").loss
    ours_seq = sspo.policy_loss("sapo", log_probs, old, adv, mask, loss_agg_mode="seq-mean-token-mean").loss
    assert theirs.item() == pytest.approx(ours_seq.item(), abs=1e-12)
    assert abs(theirs.item() - ours_token.item()) > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_cispo_equals_verl_cispo_without_its_lower_clip(mode):
    """verl clamps the IS weight to ``[1 − clip_ratio_low, 1 + clip_ratio_high]``; ``clip_ratio_low=1``
    turns the lower clip off (r > 0), leaving docs/objectives.md's ``min(r, r_max)`` with ``r_max = 1 + clip_ratio_high``."""
    log_probs, old, adv, mask = random_batch(seed=9, drift=0.8)
    theirs = verl_loss("cispo", log_probs, old, adv, mask, mode, clip_ratio_low=1.0, clip_ratio_high=1.5)
    ours = sspo.policy_loss("cispo", log_probs, old, adv, mask, loss_agg_mode=mode, ratio_max=2.5).loss
    assert_same(theirs, ours, log_probs)


def test_verl_cispo_default_also_clips_the_weight_from_below():
    log_probs, old, adv, mask = random_batch(seed=9, drift=0.8)
    theirs = verl_loss(
        "cispo", log_probs, old, adv, mask, "token-mean", clip_ratio_low=0.2, clip_ratio_high=1.5
    )
    ours = sspo.policy_loss("cispo", log_probs, old, adv, mask, ratio_max=2.5).loss
    low = (torch.exp(log_probs - old) < 0.8) & mask
    diff = grad_of(theirs, log_probs) - grad_of(ours, log_probs)
    assert int(low.sum()) > 0
    assert torch.all(diff[~low].abs() < 1e-12) and torch.all(diff[low].abs() > 1e-9)
