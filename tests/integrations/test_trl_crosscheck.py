"""Our objectives against TRL's own GRPOTrainer loss on the same float64 tensors.

TRL's ``GRPOTrainer._compute_loss`` is called unbound on a stand-in trainer whose log-prob function
returns our tensors, so TRL's exact loss code runs on them.
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("trl") is None:
    pytest.skip("TRL is not installed (pip install 'sspo[trl]')", allow_module_level=True)

from integration_cases import grad_of, random_batch, trl_loss

import sspo


def assert_same(a, b, leaf, tol=1e-12):
    assert a.item() == pytest.approx(b.item(), abs=tol)
    assert torch.allclose(grad_of(a, leaf), grad_of(b, leaf), atol=tol, rtol=0)


@pytest.mark.parametrize("loss_type,mode", [("grpo", "seq-mean-token-mean"), ("dapo", "token-mean"),
                                            ("bnpo", "token-mean"), ("dr_grpo", "seq-mean-token-sum-norm")])  # fmt: skip
def test_grpo_equals_trl_token_level_losses(loss_type, mode):
    log_probs, old, adv, mask = random_batch(seed=1, drift=0.6)
    theirs = trl_loss(loss_type, log_probs, old, adv, mask, eps_low=0.2, eps_high=0.28, max_len=16)
    ours = sspo.policy_loss("grpo", log_probs, old, adv, mask, loss_agg_mode=mode, eps_low=0.2, eps_high=0.28,
                            max_response_length=16)  # fmt: skip
    assert_same(theirs, ours.loss, log_probs)


def test_trl_grpo_counts_empty_completions_in_its_mean():
    """TRL's ``grpo`` averages over all B rows (``.mean()``); docs/objectives.md divides by the G' non-empty ones."""
    log_probs, old, adv, mask = random_batch(seed=1, drift=0.6, empty_row=True)
    theirs = trl_loss("grpo", log_probs, old, adv, mask)
    ours = sspo.policy_loss("grpo", log_probs, old, adv, mask).loss
    assert theirs.item() == pytest.approx(ours.item() * int(mask.any(-1).sum()) / mask.shape[0], abs=1e-12)


@pytest.mark.parametrize("empty_row", [False, True])
def test_gspo_equals_trl_sequence_level_grpo(empty_row):
    log_probs, old, adv, mask = random_batch(seed=4, drift=0.02, empty_row=empty_row)
    theirs = trl_loss("grpo", log_probs, old, adv, mask, level="sequence", eps_low=3e-3, eps_high=4e-3)
    ours = sspo.policy_loss("gspo", log_probs, old, adv, mask, eps_low=3e-3, eps_high=4e-3).loss
    if empty_row:  # TRL's mean over B rows again
        ours = ours * int(mask.any(-1).sum()) / mask.shape[0]
    assert_same(theirs, ours, log_probs)


@pytest.mark.parametrize("tau_pos,tau_neg,tol", [(0.75, 1.25, 1e-12), (0.8, 1.4, 1e-6)])
def test_sapo_equals_trl_sapo(tau_pos, tau_neg, tol):
    """TRL builds ``τ`` with ``torch.where(A > 0, float, float)``, i.e. in float32 even for float64 inputs:
    exact for τ representable in float32, within float32 rounding (~1e-8 here) otherwise."""
    log_probs, old, adv, mask = random_batch(seed=8, drift=0.6)
    theirs = trl_loss("sapo", log_probs, old, adv, mask, tau_pos=tau_pos, tau_neg=tau_neg)
    ours = sspo.policy_loss("sapo", log_probs, old, adv, mask, tau_pos=tau_pos, tau_neg=tau_neg).loss
    assert_same(theirs, ours, log_probs, tol=tol)


def test_cispo_equals_trl_cispo_whose_epsilon_high_is_r_max():
    log_probs, old, adv, mask = random_batch(seed=9, drift=0.8)
    assert bool(((torch.exp(log_probs - old) > 2.5) & mask).any())
    theirs = trl_loss("cispo", log_probs, old, adv, mask, eps_high=2.5)
    ours = sspo.policy_loss("cispo", log_probs, old, adv, mask, ratio_max=2.5).loss
    assert_same(theirs, ours, log_probs)
