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
    with pytest.raises(ValueError, match="token weights"):
        SSPOGRPOConfig(output_dir=str(tmp_path), use_vllm=True, vllm_importance_sampling_mode="token_truncate",
                       use_cpu=True, report_to=[])  # fmt: skip


def test_hyperparameters_map_from_trl_knobs(tmp_path):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert SSPOGRPOConfig(**kw, sspo_objective="gspo", epsilon=3e-4, epsilon_high=4e-4).objective_hyperparameters() == {
        "eps_low": 3e-4, "eps_high": 4e-4}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sapo_temperature_neg=2.0, sspo_gate="gaussian").objective_hyperparameters() == {
        "tau_pos": 1.0, "tau_neg": 2.0, "gate": "gaussian"}  # fmt: skip
    assert SSPOGRPOConfig(**kw, sspo_objective="cispo").objective_hyperparameters() == {"ratio_max": 5.0}
    assert isinstance(SSPOGRPOConfig(**kw), GRPOConfig)
