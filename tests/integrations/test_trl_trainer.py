"""SSPOGRPOTrainer: two real training steps with a tiny local model, metrics in TRL's logs, and its
loss equal to ``sspo.policy_loss`` on the same tensors (and to TRL's own loss for GRPO)."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("trl") is None:
    pytest.skip("TRL is not installed (pip install 'sspo[trl]')", allow_module_level=True)

from datasets import Dataset
from integration_cases import save_tiny_model
from trl import GRPOConfig, GRPOTrainer

import sspo
from sspo.integrations.trl import SSPOGRPOConfig, SSPOGRPOTrainer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    save_tiny_model(path)
    return str(path)


def length_reward(completions, **kwargs):
    """A Python reward: the completion's length (varies within a group, so advantages are non-zero)."""
    return [float(len(c)) for c in completions]


class RecordingTrainer(SSPOGRPOTrainer):
    """Keeps the inputs of every loss call."""

    def _compute_loss(self, model, inputs):
        self.seen = getattr(self, "seen", [])
        self.seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
        return super()._compute_loss(model, inputs)


def train(model_dir, tmp_path, objective, **overrides):
    args = SSPOGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=2,
        max_completion_length=8, max_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, sspo_objective=objective, **overrides,
    )  # fmt: skip
    data = Dataset.from_dict({"prompt": ["12+3=", "4+4=", "1+1=", "9+0="] * 4})
    trainer = RecordingTrainer(model=model_dir, reward_funcs=length_reward, args=args, train_dataset=data)
    trainer.train()
    return trainer


def independent_log_probs(model, inputs, temperature):
    """Token log-probs of the completion, computed here from the logits (not through TRL)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    length = inputs["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -length - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"][..., None]).squeeze(-1)


@pytest.mark.parametrize(
    "objective,gate_metric", [("sspo", "sspo/gate/weight_mean"), ("grpo", "sspo/pg_clipfrac")]
)
def test_two_steps_log_metrics_and_loss_equals_policy_loss(model_dir, tmp_path, objective, gate_metric):
    trainer = train(model_dir, tmp_path, objective)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and trainer.state.global_step == 2
    for log in logs:
        for key in (
            "sspo/pg_loss",
            "sspo/ppo_kl",
            "sspo/ratio/mean",
            "sspo/seq_weight/ess",
            gate_metric,
            "entropy",
        ):
            assert key in log, key
        assert log["sspo/ratio/mean"] == pytest.approx(1.0) and log["sspo/ppo_kl"] == pytest.approx(
            0.0, abs=1e-7
        )
        # on-policy the sequence weight is 1, so J is the mean group-normalised advantage: 0
        assert log["sspo/pg_loss"] == pytest.approx(0.0, abs=1e-5)
        assert log["sspo/entropy"] == pytest.approx(log["entropy"]) and log["entropy"] > 0

    # Same tensors, off-policy: perturbed behaviour log-probs of a recorded batch.
    inputs = dict(trainer.seen[-1])
    model, mask = trainer.model, inputs["completion_mask"]
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], mask], 1)
    g = torch.Generator().manual_seed(0)
    logp = independent_log_probs(model, inputs, trainer.temperature).detach()
    inputs["old_per_token_logps"] = logp + 0.3 * torch.randn(logp.shape, generator=g)
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attn, mask.shape[1])
    # TRL's fused float32 log-prob head agrees with a plain forward pass
    assert torch.allclose(torch.where(mask.bool(), trl_logp - logp, 0.0), torch.zeros_like(logp), atol=1e-5)
    ref = sspo.policy_loss(objective, trl_logp, inputs["old_per_token_logps"], inputs["advantages"], mask,
                           **trainer.args.objective_hyperparameters())  # fmt: skip
    ref_loss = ref.loss / trainer.args.gradient_accumulation_steps
    ref_loss.backward()
    assert abs(ref_loss.item()) > 1e-4
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-6)
    for mine, theirs in zip(grads, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=0)

    if objective == "grpo":  # TRL's own GRPO loss on the same inputs and model
        trainer.loss_type = "grpo"
        stock = GRPOTrainer._compute_loss(trainer, model, inputs)
        assert stock.item() == pytest.approx(loss.item(), abs=1e-6)


def test_config_refuses_what_the_sspo_loss_would_ignore(tmp_path):
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        SSPOGRPOConfig(output_dir=str(tmp_path), top_entropy_quantile=0.5, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="use_bias_correction_kl"):
        SSPOGRPOConfig(output_dir=str(tmp_path), beta=0.01, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="unknown objective"):
        SSPOGRPOConfig(output_dir=str(tmp_path), sspo_objective="ppo", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="seq-mean-token-sum"):  # LUSPO's own aggregation only
        SSPOGRPOConfig(output_dir=str(tmp_path), sspo_objective="luspo", sspo_loss_agg_mode="token-mean",
                       use_cpu=True, report_to=[])  # fmt: skip
    with pytest.raises(ValueError, match="k_pos must be >= 0"):
        SSPOGRPOConfig(output_dir=str(tmp_path), sspo_objective="vespo", vespo_k_pos=-1.0, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="m2_threshold must be > 0"):
        SSPOGRPOConfig(output_dir=str(tmp_path), sspo_objective="m2po", sspo_m2po_threshold=0.0, use_cpu=True,
                       report_to=[])  # fmt: skip
    # what TRL's own losses refuse or drop but the sspo loss takes: token IS weights for a sequence-level
    # objective (pooled over the row), sequence IS weights for VESPO (folded once), the off-policy mask
    for objective, mode in (("sspo", "token_truncate"), ("vespo", "sequence_mask")):
        SSPOGRPOConfig(output_dir=str(tmp_path), sspo_objective=objective, use_vllm=True, use_cpu=True,
                       vllm_importance_sampling_mode=mode, off_policy_mask_threshold=0.5, report_to=[])  # fmt: skip


def test_hyperparameters_map_from_trl_knobs(tmp_path):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert SSPOGRPOConfig(**kw, sspo_objective="gspo", epsilon=3e-4, epsilon_high=4e-4).objective_hyperparameters() == {
        "eps_low": 3e-4, "eps_high": 4e-4}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sapo_temperature_neg=2.0, sspo_gate="gaussian").objective_hyperparameters() == {
        "tau_pos": 1.0, "tau_neg": 2.0, "gate": "gaussian"}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sspo_objective="cispo").objective_hyperparameters() == {"ratio_max": 5.0}
    assert SSPOGRPOConfig(**kw, sspo_objective="luspo", epsilon=3e-4, epsilon_high=4e-4).objective_hyperparameters() == {
        "eps_low": 3e-4, "eps_high": 4e-4}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sspo_objective="vespo", vespo_k_neg=4.0).objective_hyperparameters() == {  # TRL's knobs
        "k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 4.0, "lambda_neg": 2.0}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sspo_objective="dppo_kl").objective_hyperparameters() == {}  # the objective's defaults
    assert SSPOGRPOConfig(**kw, sspo_objective="dppo_tv", sspo_dppo_clip_ratio=0.1, sspo_dppo_clip_ratio_high=0.3,
                          sspo_dppo_clip_ratio_c=50.0).objective_hyperparameters() == {
        "clip_ratio": 0.1, "clip_ratio_high": 0.3, "clip_ratio_c": 50.0}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sspo_objective="m2po").objective_hyperparameters() == {}
    assert SSPOGRPOConfig(**kw, sspo_objective="m2po", sspo_m2po_threshold=0.1).objective_hyperparameters() == {
        "m2_threshold": 0.1}  # fmt: skip
    assert isinstance(SSPOGRPOConfig(**kw), GRPOConfig)


def trl_vllm_ratio(old, sampler, mask, mode, clip_max=2.0, clip_min=0.5):
    """TRL 1.16's ``importance_sampling_ratio`` (``_generate_and_score_completions``), written out."""
    diff = (old - sampler) * mask
    ratio = torch.exp(diff.sum(-1, keepdim=True) if mode.startswith("sequence") else diff)
    if mode.endswith("truncate"):
        return ratio.clamp(max=clip_max)
    return ratio.masked_fill((ratio < clip_min) | (ratio > clip_max), 0.0)


def off_policy_batch(trainer, seed=0):
    """A recorded batch made off-policy (perturbed old log-probs) with a stand-in sampler's log-probs."""
    inputs = dict(trainer.seen[-1])
    logp = independent_log_probs(trainer.model, inputs, trainer.temperature).detach()
    g = torch.Generator().manual_seed(seed)
    inputs["old_per_token_logps"] = logp + 0.2 * torch.randn(logp.shape, generator=g)
    inputs["sampling_per_token_logps"] = inputs["old_per_token_logps"] + 0.3 * torch.randn(logp.shape, generator=g)
    return inputs, logp


def loss_and_grads(fn, model, inputs):
    model.zero_grad()
    loss = fn(model, inputs)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return loss.item(), grads


def set_correction(trainer, mode, threshold):
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = mode is not None
    trainer.args.vllm_importance_sampling_mode = mode or "sequence_mask"
    trainer.args.off_policy_mask_threshold = trainer.off_policy_mask_threshold = threshold


@pytest.mark.parametrize("objective,loss_type", [("grpo", "grpo"), ("vespo", "vespo")])
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", None])
@pytest.mark.parametrize("masked", [False, True])
def test_vllm_correction_and_off_policy_mask_equal_trls_own_loss(model_dir, tmp_path, objective, loss_type, mode,
                                                                 masked):  # fmt: skip
    """TRL's vLLM ratio reaches ``sspo.policy_loss`` as ``rollout_is_weights`` (``[B, T]`` token modes, ``[B]``
    sequence modes) and TRL's off-policy sequence mask as zero advantages: the loss and its gradient equal
    TRL's own ``grpo``/``vespo`` loss on the same batch (TRL refuses sequence modes for VESPO: there the
    reference is ``sspo.policy_loss`` with the ``[B]`` weights, ``log ρ_i`` folded once)."""
    trainer = train(model_dir, tmp_path, objective)
    model = trainer.model
    inputs, logp = off_policy_batch(trainer)
    mask = inputs["completion_mask"]
    threshold = None
    if masked:  # a threshold that drops the negative-advantage sequences
        kl = ((inputs["sampling_per_token_logps"] - logp) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        threshold = kl[inputs["advantages"] < 0].min().item() - 1e-4
        keep = GRPOTrainer.get_off_policy_mask(inputs["advantages"][:, None], logp, inputs["sampling_per_token_logps"],
                                               mask, threshold)  # fmt: skip
        assert 0 < int((keep == 0).sum()) < mask.shape[0]
    if mode is not None:
        inputs["importance_sampling_ratio"] = trl_vllm_ratio(inputs["old_per_token_logps"],
                                                             inputs["sampling_per_token_logps"], mask, mode)  # fmt: skip
    set_correction(trainer, mode, threshold)
    ours, our_grads = loss_and_grads(trainer._compute_loss, model, inputs)
    if objective == "vespo" and mode is not None and mode.startswith("sequence"):
        trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(model, torch.cat([inputs["prompt_ids"],
            inputs["completion_ids"]], 1), torch.cat([inputs["prompt_mask"], mask], 1), mask.shape[1])  # fmt: skip
        assert trainer.sspo_loss_inputs(model, inputs)["rollout_is_weights"].shape == (mask.shape[0],)
        adv = inputs["advantages"]
        if masked:
            adv = adv * GRPOTrainer.get_off_policy_mask(adv[:, None], trl_logp.detach(), inputs["sampling_per_token_logps"],
                                                        mask, threshold)[:, 0]  # fmt: skip
        norm, _, _ = trainer.sspo_normalisers(inputs, "train")
        ref = sspo.policy_loss("vespo", trl_logp, inputs["old_per_token_logps"], adv, mask,
                               rollout_is_weights=inputs["importance_sampling_ratio"][:, 0], **norm).loss  # fmt: skip
        theirs, their_grads = ref.item(), torch.autograd.grad(ref, list(model.parameters()))
    else:
        trainer.loss_type = loss_type
        theirs, their_grads = loss_and_grads(lambda m, i: GRPOTrainer._compute_loss(trainer, m, i), model, inputs)
    assert ours == pytest.approx(theirs, abs=1e-6)
    for mine, other in zip(our_grads, their_grads, strict=True):
        assert torch.allclose(mine, other, atol=1e-6, rtol=0)
    set_correction(trainer, None, None)
    plain, _ = loss_and_grads(trainer._compute_loss, model, inputs)
    if mode is not None or masked:
        assert abs(plain - ours) > 1e-4


@pytest.mark.parametrize("objective", sspo.OBJECTIVES)
def test_a_zero_advantage_sequence_takes_no_part_in_the_loss(objective):
    """What the off-policy mask relies on: every objective's term vanishes at ``A = 0`` (the row keeps its
    place in the normalisers)."""
    from integration_cases import grad_of, random_batch

    log_probs, old, adv, mask = random_batch(seed=3, drift=0.3)
    adv = adv.clone()
    adv[2] = 0.0
    loss = sspo.policy_loss(objective, log_probs, old, adv, mask).loss
    grad = grad_of(loss, log_probs)
    assert grad[2].abs().max().item() == 0.0 and grad[mask].abs().max().item() > 1e-3
