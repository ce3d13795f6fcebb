"""sspo.integrations.verl: registration, verl's call convention, normalisers, metrics, loading."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("verl") is None:
    pytest.skip("verl is not installed (pip install 'sspo[verl]' && pip install --no-deps verl==0.9.1)",
                allow_module_level=True)  # fmt: skip

from integration_cases import actor_config, grad_of, random_batch, token_advantages
from verl.trainer.ppo import core_algos

import sspo
import sspo.integrations.verl as sv

CFG = dict(clip_ratio_low=0.15, clip_ratio_high=0.25, tau_pos=0.9, tau_neg=1.3)
EXPECTED = {  # verl name -> (objective, hyperparameters implied by CFG)
    "sspo": ("sspo", dict(tau_pos=0.9, tau_neg=1.3, gate="arctan")),
    **{f"sspo_{gate}": ("sspo", dict(tau_pos=0.9, tau_neg=1.3, gate=gate)) for gate in sspo.GATES if gate != "arctan"},
    "sspo_grpo": ("grpo", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_gspo": ("gspo", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_gspo_token": ("gspo_token", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_gmpo": ("gmpo", dict(clip_low=0.15, clip_high=0.25)),
    "sspo_sapo": ("sapo", dict(tau_pos=0.9, tau_neg=1.3)),
    "sspo_cispo": ("cispo", dict(ratio_max=1.25)),
}
VERL_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _cases():
    for name, (objective, _) in EXPECTED.items():
        sequence = sspo.get_objective(objective).sequence_level
        for mode in ("seq-mean-token-mean",) if sequence else VERL_MODES:
            yield name, mode


def test_every_objective_and_gate_is_registered_under_its_name():
    assert set(sv.REGISTERED) == set(EXPECTED)
    assert {objective for objective, _ in EXPECTED.values()} == set(sspo.OBJECTIVES)
    for name, fn in sv.REGISTERED.items():
        assert core_algos.get_policy_loss_fn(name) is fn
    for verl_own in ("vanilla", "gspo", "sapo", "geo_mean", "cispo"):
        assert core_algos.get_policy_loss_fn(verl_own).__module__ == "verl.trainer.ppo.core_algos"


@pytest.mark.parametrize("name,mode", list(_cases()))
def test_called_as_verl_calls_it_equals_policy_loss(name, mode):
    objective, hp = EXPECTED[name]
    log_probs, old, adv, mask = random_batch(seed=3)
    cfg = actor_config(**CFG)
    loss, metrics = core_algos.get_policy_loss_fn(name)(
        old_log_prob=old, log_prob=log_probs, advantages=token_advantages(adv, mask), response_mask=mask,
        loss_agg_mode=mode, config=cfg, rollout_is_weights=None,
    )  # fmt: skip
    ref = sspo.policy_loss(objective, log_probs, old, adv, mask, loss_agg_mode=mode, **hp)
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)
    assert torch.allclose(grad_of(loss, log_probs), grad_of(ref.loss, log_probs), atol=1e-12, rtol=0)
    assert metrics["actor/ppo_kl"] == pytest.approx(ref.metrics["ppo_kl"].item())
    assert metrics["actor/pg_clipfrac"] == pytest.approx(
        ref.metrics.get("pg_clipfrac", torch.tensor(0.0)).item()
    )
    # verl logs the returned loss as actor/pg_loss itself; every other metric is forwarded
    forwarded = {f"actor/sspo/{k}" for k in ref.metrics if k != "pg_loss"}
    assert forwarded <= set(metrics) and "actor/sspo/pg_loss" not in metrics
    for key in forwarded:
        assert metrics[key] == pytest.approx(ref.metrics[key.removeprefix("actor/sspo/")].item(), abs=1e-12)
    if objective in ("sspo", "sapo"):
        assert metrics["actor/sspo/gate/weight_mean"] == pytest.approx(ref.metrics["gate/weight_mean"].item())
        assert "actor/sspo/gate/attenuated_frac" in metrics


@pytest.mark.parametrize("name,mode", [("sspo", "seq-mean-token-mean"), ("sspo_grpo", "token-mean"),
                                       ("sspo_cispo", "seq-mean-token-sum-norm")])  # fmt: skip
def test_global_batch_info_makes_micro_batches_sum_to_the_mini_batch(name, mode):
    """verl sets ``global_batch_info`` per mini-batch and back-propagates each micro-batch loss; with
    ``dp_size`` ranks DDP averages the gradients. Either way the sum equals the whole-batch loss."""
    log_probs, old, adv, mask = random_batch(seed=5, batch=8)
    tok_adv = token_advantages(adv, mask)
    fn = core_algos.get_policy_loss_fn(name)
    full, _ = fn(old, log_probs, tok_adv, mask, mode, actor_config(**CFG))
    info = dict(batch_num_tokens=int(mask.sum()), global_batch_size=8, loss_scale_factor=32)
    if mode == "seq-mean-token-sum-norm":
        full, _ = fn(
            old,
            log_probs,
            tok_adv,
            mask,
            mode,
            actor_config(**CFG, global_batch_info={"loss_scale_factor": 32}),
        )
    full_grad = grad_of(full, log_probs)
    for dp_size in (1, 2):
        cfg = actor_config(**CFG, global_batch_info={**info, "dp_size": dp_size})
        parts = [
            fn(old[s], log_probs[s], tok_adv[s], mask[s], mode, cfg)[0] for s in (slice(0, 4), slice(4, 8))
        ]
        total = sum(parts) / dp_size
        assert total.item() == pytest.approx(full.item(), abs=1e-12)
        assert torch.allclose(grad_of(total, log_probs), full_grad, atol=1e-12, rtol=0)


def test_token_sum_is_the_masked_sum_of_token_terms():
    log_probs, old, adv, mask = random_batch(seed=7)
    loss, _ = core_algos.get_policy_loss_fn("sspo_grpo")(old, log_probs, token_advantages(adv, mask), mask,
                                                         "token-sum", actor_config(**CFG))  # fmt: skip
    mean = sspo.policy_loss(
        "grpo", log_probs, old, adv, mask, loss_agg_mode="token-mean", eps_low=0.15, eps_high=0.25
    )
    assert loss.item() == pytest.approx(mean.loss.item() * int(mask.sum()), rel=1e-12)


def test_sequence_objective_with_verl_default_token_mean_says_what_to_set():
    log_probs, old, adv, mask = random_batch()
    with pytest.raises(ValueError, match="loss_agg_mode=seq-mean-token-mean"):
        core_algos.get_policy_loss_fn("sspo")(old, log_probs, token_advantages(adv, mask), mask, "token-mean",
                                              actor_config())  # fmt: skip


def test_dp_size_above_one_needs_global_counts():
    log_probs, old, adv, mask = random_batch()
    with pytest.raises(ValueError, match="global batch info"):
        core_algos.get_policy_loss_fn("sspo")(
            old,
            log_probs,
            token_advantages(adv, mask),
            mask,
            "seq-mean-token-mean",
            actor_config(global_batch_info={"dp_size": 2}),
        )


def test_rollout_is_weights_fold_into_advantages():
    log_probs, old, adv, mask = random_batch(seed=11)
    tok_adv = token_advantages(adv, mask)
    g = torch.Generator().manual_seed(1)
    weights = torch.where(mask, torch.rand(mask.shape, generator=g, dtype=torch.float64) * 2, 0.0)
    cfg = actor_config(**CFG, clip_ratio_c=1e9)  # verl's dual clip off
    ours, _ = core_algos.get_policy_loss_fn("sspo_grpo")(
        old, log_probs, tok_adv, mask, "token-mean", cfg, weights
    )
    verl, _ = core_algos.get_policy_loss_fn("vanilla")(
        old, log_probs, tok_adv, mask, "token-mean", cfg, weights
    )
    assert ours.item() == pytest.approx(verl.item(), abs=1e-12)
    assert torch.allclose(grad_of(ours, log_probs), grad_of(verl, log_probs), atol=1e-12, rtol=0)
    # a sequence-level objective takes one weight per sequence (verl broadcasts sequence-level IS weights)
    seq_w = torch.rand(mask.shape[0], generator=g, dtype=torch.float64)
    broadcast = torch.where(mask, seq_w[:, None].expand(mask.shape), 0.0)
    loss, _ = core_algos.get_policy_loss_fn("sspo")(
        old, log_probs, tok_adv, mask, "seq-mean-token-mean", cfg, broadcast
    )
    ref = sspo.policy_loss("sspo", log_probs, old, adv * seq_w, mask, tau_pos=0.9, tau_neg=1.3)
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)
    with pytest.raises(ValueError, match="vary inside a sequence"):
        core_algos.get_policy_loss_fn("sspo")(
            old, log_probs, tok_adv, mask, "seq-mean-token-mean", cfg, weights
        )


def test_verl_use_external_modules_loads_the_plugin_in_a_fresh_worker(fresh_verl):
    assert fresh_verl["loaded"]
    assert fresh_verl["sspo"] == "sspo.integrations.verl"
    assert fresh_verl["sspo_gspo_token"] == "sspo_policy_loss_gspo_token"


def test_verl_builds_an_fsdp_actor_model_beside_trl_1x(fresh_verl):
    """verl 0.9.1's ``apply_monkey_patch``, run by its FSDP engine on every actor model it builds, imports
    TRL's ``AutoModelForCausalLMWithValueHead`` whenever TRL is importable; TRL 1.x has no such class. With
    the plug-in loaded as verl loads it, the patch runs beside whatever TRL is installed."""
    assert fresh_verl["monkey_patch"] == "ok"


def test_only_the_monkey_patch_trl_check_is_rebound():
    from verl.models.transformers import monkey_patch
    from verl.utils import import_utils
    from verl.utils import model as verl_model

    assert monkey_patch.is_trl_available is sv.trl_has_value_head
    assert verl_model.is_trl_available is import_utils.is_trl_available  # the critic's value-head loader
    if importlib.util.find_spec("trl") is not None:
        import trl

        assert import_utils.is_trl_available()
        if int(trl.__version__.split(".")[0]) >= 1:  # TRL 1.x dropped the value-head model
            assert not sv.trl_has_value_head()
