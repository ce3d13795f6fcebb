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

CFG = dict(clip_ratio=0.1, clip_ratio_low=0.15, clip_ratio_high=0.25, tau_pos=0.9, tau_neg=1.3, clip_ratio_c=8.0)
DPPO = dict(clip_ratio=0.1, clip_ratio_low=0.15, clip_ratio_high=0.25, clip_ratio_c=8.0)
EXPECTED = {  # verl name -> (objective, hyperparameters implied by CFG)
    "sspo": ("sspo", dict(tau_pos=0.9, tau_neg=1.3, gate="arctan")),
    **{f"sspo_{gate}": ("sspo", dict(tau_pos=0.9, tau_neg=1.3, gate=gate)) for gate in sspo.GATES if gate != "arctan"},
    "sspo_grpo": ("grpo", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_gspo": ("gspo", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_gspo_token": ("gspo_token", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_gmpo": ("gmpo", dict(clip_low=0.15, clip_high=0.25)),
    "sspo_sapo": ("sapo", dict(tau_pos=0.9, tau_neg=1.3)),
    "sspo_cispo": ("cispo", dict(ratio_max=1.25)),
    "sspo_vespo": ("vespo", {}),
    "sspo_luspo": ("luspo", dict(eps_low=0.15, eps_high=0.25)),
    "sspo_dppo_tv": ("dppo_tv", DPPO),
    "sspo_dppo_kl": ("dppo_kl", DPPO),
    "sspo_m2po": ("m2po", {}),
}
VERL_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _cases():
    for name, (objective, _) in EXPECTED.items():
        for mode in VERL_MODES:
            if mode in sspo.get_objective(objective).agg_modes:
                yield name, mode


def test_every_objective_and_gate_is_registered_under_its_name():
    assert set(sv.REGISTERED) == set(EXPECTED)
    assert {objective for objective, _ in EXPECTED.values()} == set(sspo.OBJECTIVES)
    for name, fn in sv.REGISTERED.items():
        assert core_algos.get_policy_loss_fn(name) is fn
    for verl_own in ("vanilla", "gspo", "sapo", "geo_mean", "cispo", "dppo_tv", "dppo_kl"):
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
    assert sv.hyperparameters_from_config(objective, cfg) == {k: v for k, v in hp.items() if k != "gate"}
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


@pytest.mark.parametrize("name,needs", [("sspo", "seq-mean-token-mean"), ("sspo_luspo", "seq-mean-token-sum")])
def test_an_objective_with_verl_default_token_mean_says_what_to_set(name, needs):
    log_probs, old, adv, mask = random_batch()
    with pytest.raises(ValueError, match=f"actor_rollout_ref.actor.loss_agg_mode={needs} "):
        core_algos.get_policy_loss_fn(name)(old, log_probs, token_advantages(adv, mask), mask, "token-mean",
                                            actor_config())  # fmt: skip


def test_dppo_reads_the_actor_config_as_verls_own_dppo():
    """verl's ``dppo_*`` take ``clip_ratio_c`` from the ``ActorConfig`` (3.0 unless set; 20 only without the
    field), and ``clip_ratio_low``/``_high`` over ``clip_ratio``: same gradient as verl's own loss (its value
    is written differently, tests/integrations/test_offpolicy_crosscheck.py), with verl's weights too."""
    log_probs, old, adv, mask = random_batch(seed=12, drift=0.8)
    old, log_probs = old / 3, (log_probs / 3).detach().requires_grad_(True)  # probabilities that move
    tok_adv = token_advantages(adv, mask)
    weights = torch.where(mask, torch.rand(mask.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5, 0.0)
    assert sv.hyperparameters_from_config("dppo_tv", actor_config())["clip_ratio_c"] == 3.0
    assert sv.hyperparameters_from_config("dppo_tv", {"clip_ratio": 0.1})["clip_ratio_c"] == 20.0
    for name in ("dppo_tv", "dppo_kl"):
        for cfg in (actor_config(), actor_config(clip_ratio=0.08, clip_ratio_low=0.05, clip_ratio_high=0.12, clip_ratio_c=1.3)):
            ours, metrics = core_algos.get_policy_loss_fn(f"sspo_{name}")(old, log_probs, tok_adv, mask, "token-mean",
                                                                          cfg, weights)  # fmt: skip
            theirs, their_metrics = core_algos.get_policy_loss_fn(name)(old, log_probs, tok_adv, mask, "token-mean",
                                                                        cfg, weights)  # fmt: skip
            torch.testing.assert_close(grad_of(ours, log_probs), grad_of(theirs, log_probs), atol=1e-12, rtol=0)
            assert metrics["actor/pg_clipfrac"] == pytest.approx(their_metrics["actor/pg_clipfrac"], abs=1e-12)
            assert 0 < metrics["actor/pg_clipfrac"] < 1


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


def verl_weights(old, mask, level, seed=1, scale=0.3):
    """verl's own ``rollout_is_weights`` (``[B, T]``, also for ``rollout_is="sequence"``) for a stand-in sampler."""
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_rejection_mask

    sampler = old + scale * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed), dtype=old.dtype)
    proto, _, _ = compute_rollout_correction_and_rejection_mask(old, sampler, mask.long(), rollout_is=level,
                                                                rollout_is_threshold=4.0)  # fmt: skip
    return proto.batch["rollout_is_weights"], sampler


def test_token_weights_multiply_the_terms_as_in_verl():
    log_probs, old, adv, mask = random_batch(seed=11)
    tok_adv = token_advantages(adv, mask)
    weights, _ = verl_weights(old, mask, "token")
    cfg = actor_config(**{**CFG, "clip_ratio_c": 1e9})  # verl's dual clip off
    ours, metrics = core_algos.get_policy_loss_fn("sspo_grpo")(old, log_probs, tok_adv, mask, "token-mean", cfg, weights)
    verl, _ = core_algos.get_policy_loss_fn("vanilla")(old, log_probs, tok_adv, mask, "token-mean", cfg, weights)
    assert ours.item() == pytest.approx(verl.item(), abs=1e-12)
    assert torch.allclose(grad_of(ours, log_probs), grad_of(verl, log_probs), atol=1e-12, rtol=0)
    assert metrics["actor/sspo/rollout_corr/is_mean"] == pytest.approx(weights[mask].mean().item(), abs=1e-12)
    plain, _ = core_algos.get_policy_loss_fn("sspo_grpo")(old, log_probs, tok_adv, mask, "token-mean", cfg)
    assert abs(plain.item() - ours.item()) > 1e-3


@pytest.mark.parametrize("name", ["sspo", "sspo_gspo", "sspo_gmpo"])
def test_a_sequence_objective_takes_the_row_mean_of_token_weights(name):
    """Token weights that vary inside a sequence are pooled (their mean over the row) by a sequence-level
    objective; verl's sequence weights are constant over the row, so they are taken as they are."""
    objective, hp = EXPECTED[name]
    log_probs, old, adv, mask = random_batch(seed=11, drift=0.05)
    tok_adv = token_advantages(adv, mask)
    for level in ("token", "sequence"):
        weights, _ = verl_weights(old, mask, level)
        loss, _ = core_algos.get_policy_loss_fn(name)(old, log_probs, tok_adv, mask, "seq-mean-token-mean",
                                                      actor_config(**CFG), weights)  # fmt: skip
        row_mean = torch.where(mask, weights, 0.0).sum(-1) / mask.sum(-1)
        ref = sspo.policy_loss(objective, log_probs, old, adv, mask, rollout_is_weights=row_mean, **hp)
        assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)
        assert torch.allclose(grad_of(loss, log_probs), grad_of(ref.loss, log_probs), atol=1e-12, rtol=0)
        plain = sspo.policy_loss(objective, log_probs, old, adv, mask, **hp).loss
        assert abs(plain.item() - loss.item()) > 1e-4


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_vespo_gets_verls_weights_at_the_level_verl_computed_them(level):
    """verl hands ``[B, T]`` weights at both levels; VESPO folds ``Σ_t log ρ_t`` (token) or ``log ρ_i`` once
    (sequence): the plug-in equals ``sspo.policy_loss`` computing the same correction from the sampler's
    log-probs itself, and reading a sequence weight per token would differ."""
    log_probs, old, adv, mask = random_batch(seed=13, drift=0.1)
    weights, sampler = verl_weights(old, mask, level, scale=0.2)
    assert sv.rollout_is_level(weights, mask) == level
    loss, metrics = core_algos.get_policy_loss_fn("sspo_vespo")(old, log_probs, token_advantages(adv, mask), mask,
                                                                "token-mean", actor_config(), weights)  # fmt: skip
    ref = sspo.policy_loss("vespo", log_probs, old, adv, mask, rollout_log_probs=sampler, rollout_is=level,
                           rollout_is_threshold=4.0)  # fmt: skip
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)
    assert torch.allclose(grad_of(loss, log_probs), grad_of(ref.loss, log_probs), atol=1e-12, rtol=0)
    assert metrics["actor/sspo/vespo/log_w_mean"] == pytest.approx(ref.metrics["vespo/log_w_mean"].item(), abs=1e-12)
    per_token = sspo.policy_loss("vespo", log_probs, old, adv, mask, rollout_is_weights=weights).loss
    if level == "sequence":
        assert abs(per_token.item() - loss.item()) > 1e-3
    else:
        assert per_token.item() == pytest.approx(loss.item(), abs=1e-12)


def test_the_level_can_be_declared():
    log_probs, old, adv, mask = random_batch(seed=13, drift=0.1)
    tok_adv = token_advantages(adv, mask)
    seq_w, _ = verl_weights(old, mask, "sequence", scale=0.2)
    tok_w, _ = verl_weights(old, mask, "token", scale=0.2)
    as_token = sv.make_policy_loss("vespo", rollout_is_level="token")
    loss, _ = as_token(old, log_probs, tok_adv, mask, "token-mean", actor_config(), seq_w)
    ref = sspo.policy_loss("vespo", log_probs, old, adv, mask, rollout_is_weights=seq_w)  # [B, T]: per token
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)
    as_sequence = sv.make_policy_loss("vespo", rollout_is_level="sequence")
    with pytest.raises(ValueError, match="vary inside a sequence"):
        as_sequence(old, log_probs, tok_adv, mask, "token-mean", actor_config(), tok_w)
    with pytest.raises(ValueError, match="rollout_is_level"):
        sv.make_policy_loss("vespo", rollout_is_level="seq")


def test_the_level_is_read_from_the_rows():
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    constant = torch.tensor([[1.5, 1.5, 1.5], [0.7, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert sv.rollout_is_level(constant, mask) == "sequence"
    assert sv.rollout_is_level(constant + torch.tensor([0.0, 1e-6, 0.0]), mask) == "token"
    assert sv.rollout_is_level(torch.tensor([[1.5, 1.5, 9.0]]), mask[:1] & torch.tensor([True, True, False])) == "sequence"
    assert sv.rollout_weights("vespo", constant, mask).tolist() == pytest.approx([1.5, 0.7, 0.0])
    assert sv.rollout_weights("grpo", constant, mask) is not None and sv.rollout_weights("grpo", constant, mask).shape == (3, 3)


def test_register_fixes_hyperparameters_verl_has_no_field_for():
    log_probs, old, adv, mask = random_batch(seed=14, drift=0.15)
    shape = dict(k_pos=1.5, lambda_pos=2.0, k_neg=4.0, lambda_neg=3.5)
    try:
        fn = sv.register("test_vespo_shape", "vespo", **shape)
        assert core_algos.get_policy_loss_fn("test_vespo_shape") is fn
        loss, _ = fn(old, log_probs, token_advantages(adv, mask), mask, "token-mean", actor_config())
        ref = sspo.policy_loss("vespo", log_probs, old, adv, mask, **shape).loss
        assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
        assert abs(sspo.policy_loss("vespo", log_probs, old, adv, mask).loss.item() - ref.item()) > 1e-4
        with pytest.raises(ValueError, match="overwrite=True"):
            sv.register("test_vespo_shape", "vespo")
        m2, _ = sv.register("test_vespo_shape", "m2po", overwrite=True, m2_threshold=0.01)(
            old, log_probs, token_advantages(adv, mask), mask, "token-mean", actor_config())
        assert m2.item() == pytest.approx(sspo.policy_loss("m2po", log_probs, old, adv, mask, m2_threshold=0.01).loss.item(), abs=1e-12)
    finally:
        core_algos.POLICY_LOSS_REGISTRY.pop("test_vespo_shape", None)
    with pytest.raises(ValueError, match="verl already has"):
        sv.register("dppo_tv", "dppo_tv")
    with pytest.raises(ValueError, match="no hyperparameter k_pos"):
        sv.register("test_bad", "grpo", k_pos=1.0)
    assert "test_bad" not in core_algos.POLICY_LOSS_REGISTRY


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
