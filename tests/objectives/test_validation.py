"""Bad input raises ValueError naming the argument; masked garbage is ignored."""

import math

import pytest
import torch
from objective_cases import SEQUENCE_OBJECTIVES, grad_of, random_case

import sspo


def test_unknown_objective_lists_valid_names():
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match="unknown objective 'ppo'.*grpo.*sspo.*cispo"):
        sspo.policy_loss("ppo", lp, old, adv, mask)


def test_unknown_gate_lists_valid_gates():
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match="unknown gate 'tanh'.*arctan.*gaussian.*sigmoid"):
        sspo.policy_loss("sspo", lp, old, adv, mask, gate="tanh")


def test_unknown_hyperparameter_is_named():
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match="'grpo' has no hyperparameter 'tau_pos'; valid: eps_low, eps_high"):
        sspo.policy_loss("grpo", lp, old, adv, mask, tau_pos=1.0)
    with pytest.raises(ValueError, match="tau_neg must be > 0, got -1"):
        sspo.policy_loss("sspo", lp, old, adv, mask, tau_neg=-1.0)


def test_shape_mismatches_name_the_argument():
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match=r"old_log_probs must have the shape of log_probs \(6, 9\), got shape \(6, 8\)"):
        sspo.policy_loss("sspo", lp, old[:, :8], adv, mask)
    with pytest.raises(ValueError, match=r"advantages must be \[B\]=\(6,\) or \[B, T\]=\(6, 9\), got shape \(5,\)"):
        sspo.policy_loss("sspo", lp, old, adv[:5], mask)
    with pytest.raises(ValueError, match=r"response_mask must have the shape"):
        sspo.policy_loss("sspo", lp, old, adv, mask[:, :3])
    with pytest.raises(ValueError, match=r"log_probs must be \[B, T\]"):
        sspo.policy_loss("sspo", lp[0], old[0], adv[:1], mask[0])
    with pytest.raises(ValueError, match="old_log_probs must be a floating-point tensor.*int64"):
        sspo.policy_loss("sspo", lp, old.long(), adv, mask)


def test_mask_must_be_zero_one():
    lp, old, adv, mask = random_case()
    bad = mask.double()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="response_mask must be boolean or hold only 0/1"):
        sspo.policy_loss("sspo", lp, old, adv, bad)
    good = sspo.policy_loss("sspo", lp, old, adv, mask.double())
    torch.testing.assert_close(good.loss, sspo.policy_loss("sspo", lp, old, adv, mask).loss)


@pytest.mark.parametrize("name", SEQUENCE_OBJECTIVES)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_sequence_objective_with_token_mode_is_an_error(name, mode):
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match=f"'{name}' is sequence-level: loss_agg_mode='{mode}'"):
        sspo.policy_loss(name, lp, old, adv, mask, loss_agg_mode=mode)


def test_unknown_mode_and_estimator():
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match="loss_agg_mode='mean' is not one of token-mean"):
        sspo.policy_loss("grpo", lp, old, adv, mask, loss_agg_mode="mean")
    with pytest.raises(ValueError, match="kl_estimator='k4'"):
        sspo.policy_loss("grpo", lp, old, adv, mask, kl_estimator="k4")
    with pytest.raises(ValueError, match="ref_log_probs is None"):
        sspo.policy_loss("grpo", lp, old, adv, mask, kl_coef=0.1)


def test_register_gate_checks_h0_and_dh0():
    with pytest.raises(ValueError, match=r"gate 'shifted' fails h\(0\) = 0"):
        sspo.register_gate("shifted", lambda d, tau: torch.atan(tau * d) / tau + 0.1)
    with pytest.raises(ValueError, match=r"gate 'steep' fails h'\(0\) = 1 at tau=0.5: h'\(0\) = 2"):
        sspo.register_gate("steep", lambda d, tau: 2 * torch.tanh(d))
    with pytest.raises(ValueError, match="the given derivative disagrees"):
        sspo.register_gate("lying", lambda d, tau: torch.tanh(tau * d) / tau, lambda d, tau: torch.ones_like(d))
    assert "shifted" not in sspo.GATES and "steep" not in sspo.GATES


def test_registered_gate_is_usable_and_listed():
    gate = sspo.register_gate(
        "tanh_test", lambda d, tau: torch.tanh(tau * d) / tau, lambda d, tau: 1 - torch.tanh(tau * d) ** 2,
        overwrite=True,
    )  # fmt: skip
    assert "tanh_test" in sspo.GATES and sspo.GATES["tanh_test"] is gate
    lp, old, adv, mask = random_case()
    out = sspo.policy_loss("sspo", lp, old, adv, mask, gate="tanh_test")
    n = mask.sum(-1).double()
    delta = torch.where(mask, lp.detach() - old, 0.0)
    tau = torch.where(adv > 0, 1.0, 1.05).double()[:, None]
    s = torch.exp((torch.tanh(tau * delta) / tau * mask).sum(-1) / n.clamp(min=1))
    torch.testing.assert_close(-out.loss.detach(), (s * adv * (n > 0)).sum() / (n > 0).sum(), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="already registered"):
        sspo.register_gate("tanh_test", lambda d, tau: d)


@pytest.mark.parametrize("name", sspo.OBJECTIVES)
def test_non_finite_at_valid_positions_raises_and_masked_is_ignored(name):
    lp, old, adv, mask = random_case()
    bad_old = old.clone()
    bad_old[0, 0] = math.nan
    with pytest.raises(ValueError, match="old_log_probs has 1 non-finite value"):
        sspo.policy_loss(name, lp, bad_old, adv, mask)
    out = sspo.policy_loss(name, lp, bad_old, adv, mask, check_finite=False)
    assert out.loss.isnan() or out.loss.isfinite()  # the caller opted out; nothing is raised

    dirty_lp = lp.detach().clone()
    dirty_old = old.clone()
    dirty_lp[~mask] = math.nan
    dirty_old[~mask] = -math.inf
    dirty_lp.requires_grad_(True)
    clean = sspo.policy_loss(name, lp, old, adv, mask)
    dirty = sspo.policy_loss(name, dirty_lp, dirty_old, adv, mask)
    torch.testing.assert_close(dirty.loss, clean.loss)
    g = grad_of(dirty.loss, dirty_lp)
    torch.testing.assert_close(g, grad_of(clean.loss, lp))
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()
    for key, value in dirty.metrics.items():
        assert torch.isfinite(value), key


@pytest.mark.parametrize(("objective", "gate"), [("sspo", "arctan_ratio"), ("sspo", "gaussian"), ("sapo", "erf_ratio")])
def test_trainer_config_accepts_every_gate_name(objective, gate):
    config = sspo.load_config("tiny", [f"objective.name={objective}", f"objective.params.gate={gate}"])
    assert config.objective.name == objective and config.objective.params["gate"] == gate


def test_train_command_names_the_valid_gates(capsys):
    from sspo.cli import main

    assert main(["train", "--config", "tiny", "objective.params.gate=nope"]) == 2
    err = capsys.readouterr().err
    assert "objective.params: unknown gate 'nope'; valid gates: arctan, arctan_ratio, erf_ratio, gaussian" in err
    assert main(["train", "--config", "tiny", "objective.name=sapo", "objective.params.gate=arctan"]) == 2
    assert "gate 'arctan' is a log-space gate; a ratio-space gate is needed here" in capsys.readouterr().err
