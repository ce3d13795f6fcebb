"""Two GRPO steps per loss mode inside verl's own ``ActorRolloutRefWorker``, on CPU, without Ray.

Run by ``test_verl_worker.py`` in a fresh interpreter (verl sets up a process group, patches
transformers and reads its environment)::

    VERL_USE_EXTERNAL_MODULES=verl_cpu_platform,sspo.integrations.verl VERL_PLATFORM=cpu \\
    VERL_ENGINE_DEVICE=cuda python verl_worker_run.py OUT.pt sspo sspo_grpo ...

What is verl's: the config (composed with Hydra from ``verl/trainer/config/ppo_trainer.yaml``, as
``main_ppo`` composes it, and checked by its ``validate_config``), the worker, its FSDP2 engine over
gloo, its GRPO advantages, and the TensorDict calls verl's trainer makes (``compute_log_prob`` with
``calculate_entropy``, ``update_actor`` with the mini-batch size). What stands in for GPU-only parts:
the CPU platform (``verl_cpu_platform``), ``VERL_ENGINE_DEVICE=cuda`` (selects verl's FSDP engine class,
registered for cuda/npu only) and rollouts by ``transformers``' ``generate`` on a copy of the model.

Each step also carries verl's rollout-correction weights, computed by verl's own
``compute_rollout_correction_and_add_to_batch`` (as its trainer does) against stand-in sampler log-probs
(the old log-probs plus noise): sequence-level weights (``rollout_is="sequence"``, which verl hands the
loss broadcast to ``[B, T]``) in the first step, token-level ones in the second.

Each loss function call is recorded (inputs, weights and returned loss) so that the test can recompute the
loss with :func:`sspo.policy_loss` on the very tensors verl passed. Writes ``{loss_mode: run}`` with
``torch.save``; every value is a tensor, number, string, list or dict (loads with ``weights_only=True``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import verl
from hydra import compose, initialize_config_dir
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
from verl import DataProto
from verl.trainer.config.algorithm import RolloutCorrectionConfig
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils import tensordict_utils as tu
from verl.utils.config import validate_config
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

import sspo
import sspo.integrations.verl as sspo_verl
from sspo.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

PROMPTS = ("12+3=", "4+4=", "1+10=", "9+0=")
GROUP = 4  # rollout.n
RESPONSE_LENGTH = 8
MINI_BATCH_PROMPTS = 2  # ppo_mini_batch_size: 2 mini-batches per step
MICRO_BATCH = 4  # per "GPU": 2 micro-batches per mini-batch
STEPS = 2
ACTOR_FIELDS = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "tau_pos": 1.0, "tau_neg": 1.05}
"""Actor hyperparameters given to verl; the test derives each objective's from them."""
RECORDED_FIELDS = (*ACTOR_FIELDS, "clip_ratio", "clip_ratio_c")
"""Actor fields recorded (``clip_ratio``, ``clip_ratio_c``: verl's defaults, read by the DPPO losses)."""
ROLLOUT_IS = ("sequence", "token")
"""verl's ``algorithm.rollout_correction.rollout_is`` per step."""
SAMPLER_NOISE = 0.1
"""Standard deviation of the stand-in sampler's log-probs around the old ones."""


def compose_config(model_dir: str, loss_mode: str, loss_agg_mode: str):
    """verl's ``ppo_trainer`` config with the overrides a CPU run of the tiny model needs."""
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.use_remove_padding=False",  # padding removal needs flash-attn
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",  # verl's default needs flash-attn
        "actor_rollout_ref.actor.strategy=fsdp2",  # FSDP1 on CPU fails on sync_module_states
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}",
        f"actor_rollout_ref.actor.loss_agg_mode={loss_agg_mode}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={MINI_BATCH_PROMPTS}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={MICRO_BATCH}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO_BATCH}",
        f"actor_rollout_ref.rollout.n={GROUP}",
        "actor_rollout_ref.rollout.name=hf",  # not built: the worker's role is "actor"
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.actor.entropy_coeff=0",
        *(f"actor_rollout_ref.actor.{k}={v}" for k, v in ACTOR_FIELDS.items()),
        "algorithm.adv_estimator=grpo",
        f"data.train_batch_size={len(PROMPTS)}",
        f"data.max_response_length={RESPONSE_LENGTH}",
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
    ]
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return config


def record_calls(loss_mode: str, calls: list) -> None:
    """Wrap the registered loss so each call's tensors and loss are kept (the call itself is unchanged)."""
    registered = core_algos.POLICY_LOSS_REGISTRY[loss_mode]

    def recorded(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights=None):
        loss, metrics = registered(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                                   rollout_is_weights)  # fmt: skip
        calls.append({
            "log_probs": log_prob.detach().clone(), "old_log_probs": old_log_prob.detach().clone(),
            "advantages": advantages.detach().clone(), "mask": response_mask.detach().clone(),
            "rollout_is_weights": None if rollout_is_weights is None else rollout_is_weights.detach().clone(),
            "global_batch_info": {
                k: float(v) for k, v in config.global_batch_info.items() if v is not None},
            "loss": loss.detach().clone(), "loss_agg_mode": loss_agg_mode,
        })  # fmt: skip
        return loss, metrics

    core_algos.POLICY_LOSS_REGISTRY[loss_mode] = recorded


def full_state_dict(worker) -> dict[str, torch.Tensor]:
    """The actor's parameters, gathered from FSDP2's DTensors."""
    state = worker.actor.engine.module.state_dict()
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in state.items()}


def rollout(model, tokenizer) -> DataProto:
    """``GROUP`` sampled responses per prompt in verl's layout (left-padded prompts, right-padded responses)."""
    tokenizer.padding_side = "left"
    prompts = tokenizer([p for p in PROMPTS for _ in range(GROUP)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**prompts, do_sample=True, max_new_tokens=RESPONSE_LENGTH, min_new_tokens=1,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    responses = out[:, prompts.input_ids.shape[1] :]
    responses = torch.nn.functional.pad(responses, (0, RESPONSE_LENGTH - responses.shape[1]),
                                        value=tokenizer.pad_token_id)  # fmt: skip
    eos = (responses == tokenizer.eos_token_id).int()
    response_mask = ((eos.cumsum(1) - eos) == 0).long()  # up to and including the first eos
    responses = torch.where(response_mask.bool(), responses, tokenizer.pad_token_id)
    attention_mask = torch.cat([prompts.attention_mask, response_mask], 1)
    return DataProto.from_dict(tensors={
        "prompts": prompts.input_ids, "responses": responses,
        "input_ids": torch.cat([prompts.input_ids, responses], 1), "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0), "response_mask": response_mask,
    })  # fmt: skip


def digit_reward(batch: DataProto, tokenizer) -> torch.Tensor:
    """Token-level rewards: the fraction of digits in the response, on its last token."""
    texts = tokenizer.batch_decode(batch.batch["responses"], skip_special_tokens=True)
    mask = batch.batch["response_mask"]
    rewards = torch.zeros(mask.shape)
    scores = torch.tensor([sum(c.isdigit() for c in text) / RESPONSE_LENGTH for text in texts])
    rewards[torch.arange(len(texts)), mask.sum(1) - 1] = scores
    return rewards


def train(loss_mode: str, model_dir: str, tokenizer) -> dict:
    objective = sspo_verl.verl_names()[loss_mode][0]
    agg = sspo.get_objective(objective).default_agg_mode
    config = compose_config(model_dir, loss_mode, agg)
    calls: list = []
    record_calls(loss_mode, calls)
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
    worker.init_model()
    behaviour = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    mini_batch = MINI_BATCH_PROMPTS * GROUP
    steps, before = [], full_state_dict(worker)
    for step in range(STEPS):
        behaviour.load_state_dict(before)  # the rollout copy gets the actor's current weights
        batch = rollout(behaviour, tokenizer)
        index = np.array([i // GROUP for i in range(len(batch))], dtype=object)
        advantages, _ = core_algos.compute_grpo_outcome_advantage(
            digit_reward(batch, tokenizer), batch.batch["response_mask"].float(), index
        )
        data = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False, temperature=1.0)
        old = no_padding_2_padding(tu.get(worker.compute_log_prob(data), "log_probs"), data).float()
        batch.batch["old_log_probs"], batch.batch["advantages"] = old, advantages
        noise = SAMPLER_NOISE * torch.randn(old.shape, generator=torch.Generator().manual_seed(step))
        batch.batch["rollout_log_probs"] = old + noise * batch.batch["response_mask"]
        correction = RolloutCorrectionConfig(rollout_is=ROLLOUT_IS[step], rollout_is_threshold=2.0)
        batch, _ = compute_rollout_correction_and_add_to_batch(batch, correction)
        data = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(
            data, calculate_entropy=False, distillation_use_topk=False, distillation_only=False,
            global_batch_size=mini_batch, mini_batch_size=mini_batch, epochs=1, seed=42,
            dataloader_kwargs={"shuffle": False}, temperature=1.0, compute_loss=True,
        )  # fmt: skip
        first_call = len(calls)
        metrics = tu.get(worker.update_actor(data), "metrics")
        after = full_state_dict(worker)
        steps.append({
            "metrics": {k: [float(x) for x in v] if isinstance(v, list) else float(v) for k, v in metrics.items()},
            "calls": calls[first_call:], "rollout_is": ROLLOUT_IS[step],
            "max_weight_change": max(float((after[k] - before[k]).abs().max()) for k in after),
        })  # fmt: skip
        before = after
    actor = config.actor_rollout_ref.actor
    return {
        "objective": objective, "loss_agg_mode": agg, "mini_batches": len(batch) // mini_batch, "steps": steps,
        "actor": {k: float(actor[k]) for k in RECORDED_FIELDS},
    }  # fmt: skip


def main(out: str, loss_modes: list[str]) -> None:
    dist.init_process_group("gloo")  # what Ray's worker set-up does; verl's own init asks for cpu:gloo twice
    model_dir = str(Path(out).parent / "tiny-model")
    tokenizer = build_char_tokenizer(model_dir)
    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                           max_position_embeddings=64)  # fmt: skip
    build_tiny_model(tokenizer, tiny).save_pretrained(model_dir)
    runs = {mode: train(mode, model_dir, tokenizer) for mode in loss_modes}
    torch.save(runs, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
