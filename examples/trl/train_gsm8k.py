"""TRL GRPO on GSM8K with any sspo objective, shaped like the paper preset (generation, rewards and
logging stay TRL's; only the loss is sspo's).

    python examples/trl/train_gsm8k.py --objective sspo                 # Qwen2.5-0.5B-Instruct, one GPU
    python examples/trl/train_gsm8k.py --objective gspo --use-vllm      # vLLM colocated generation
    accelerate launch --num_processes 4 examples/trl/train_gsm8k.py --objective sspo
    python examples/trl/train_gsm8k.py --objective gmpo rollout.max_new_tokens=256 optim.lr=2e-6

The shape comes from the sspo preset ``qwen2.5-0.5b-gsm8k-<objective>`` (``configs/``; trailing
``section.field=value`` arguments override it as for ``sspo train``) through :func:`grpo_fields`:
64 prompts × 8 samples per generation batch, split into 4 optimizer updates of 128 responses (micro-batches
of 16), 512 new tokens, lr 1e-6 with 10 warm-up updates, the objective's hyperparameters. Needs
``pip install 'sspo[trl]'`` and the Hugging Face hub (model and ``openai/gsm8k``) unless ``--model`` and
``task.path=`` name local copies; ``--model tiny`` is sspo's built-in tiny model (CPU smoke runs).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import sspo

PRESET = "qwen2.5-0.5b-gsm8k"
"""The paper preset; ``<PRESET>-<objective>.yaml`` holds each objective's hyperparameters."""
PRESET_OF = {"gspo_token": "gspo", "luspo": "gspo"}
"""Objectives without a preset of their own take another's hyperparameters (LUSPO: GSPO's ε, which are its
defaults); the others without one (``cispo``, ``vespo``, ``dppo_*``, ``m2po``) take their defaults."""
LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
"""sspo ``optim.schedule`` (after ``optim.warmup_steps``) → transformers ``lr_scheduler_type``."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="sspo", help="an objective of sspo.OBJECTIVES")
    parser.add_argument("--model", help="hub id, local directory or 'tiny' (default: the preset's model)")
    parser.add_argument("--output-dir", default="runs/trl-gsm8k")
    parser.add_argument("--use-vllm", action="store_true")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: the preset's steps × mini-batches)")
    parser.add_argument("--report-to", default="tensorboard", help="TRL/transformers report_to ('none': off)")
    parser.add_argument("overrides", nargs="*", help="preset overrides, section.field=value")
    return parser.parse_args(argv)


def preset_config(objective: str, overrides=(), preset: str = PRESET) -> sspo.TrainConfig:
    """The preset for ``objective`` (``<preset>-<objective>``, or ``preset`` with the hyperparameters of
    :data:`PRESET_OF`'s choice) with ``overrides`` applied."""
    configs = Path(sspo.__file__).parent / "configs"
    if (configs / f"{preset}-{objective}.yaml").is_file():
        return sspo.load_config(f"{preset}-{objective}", list(overrides))
    params = sspo.load_config(f"{preset}-{PRESET_OF[objective]}").objective.params if objective in PRESET_OF else {}
    return sspo.load_config(preset, [f"objective.name={objective}", f"objective.params={json.dumps(params)}",
                                     *overrides])  # fmt: skip


def objective_fields(config: sspo.TrainConfig) -> dict:
    """``SSPOGRPOConfig`` fields carrying the objective and its hyperparameters (TRL's own knobs where
    TRL has one: ``epsilon``/``epsilon_high``, ``sapo_temperature_pos/neg``, ``vespo_*``)."""
    o, p = config.objective, config.objective.params
    fields = {"sspo_objective": o.name, "sspo_loss_agg_mode": o.loss_agg_mode, "beta": o.kl_coef,
              "entropy_coef": o.entropy_coef}  # fmt: skip
    if "eps_low" in p:
        fields.update(epsilon=p["eps_low"], epsilon_high=p.get("eps_high", p["eps_low"]))
    if "tau_pos" in p:
        fields.update(sapo_temperature_pos=p["tau_pos"], sapo_temperature_neg=p.get("tau_neg", p["tau_pos"]))
    if "gate" in p:
        fields["sspo_gate"] = p["gate"]
    if "clip_low" in p:
        fields.update(sspo_gmpo_clip_low=p["clip_low"], sspo_gmpo_clip_high=p.get("clip_high", p["clip_low"]))
    if "ratio_max" in p:
        fields["sspo_cispo_ratio_max"] = p["ratio_max"]
    fields.update({f"vespo_{k}": p[k] for k in ("k_pos", "lambda_pos", "k_neg", "lambda_neg") if k in p})
    fields.update({f"sspo_dppo_{k}": p[k] for k in ("clip_ratio", "clip_ratio_low", "clip_ratio_high", "clip_ratio_c")
                   if k in p})  # fmt: skip
    if "m2_threshold" in p:
        fields["sspo_m2po_threshold"] = p["m2_threshold"]
    return fields


def grpo_fields(config: sspo.TrainConfig, num_processes: int = 1) -> dict:
    """``GRPOConfig`` fields giving TRL the preset's batch shape, sampling and optimiser.

    One TRL generation batch is one sspo rollout batch (``prompts_per_step × samples_per_prompt``
    responses); it is consumed in ``update.mini_batches`` optimizer steps, each accumulating micro-batches
    of ``update.micro_batch_size`` over ``num_processes`` processes. ``max_steps`` counts optimizer steps.
    """
    r, u, p = config.rollout, config.update, config.optim
    responses = r.prompts_per_step * r.samples_per_prompt
    micro = u.micro_batch_size or responses // u.mini_batches
    per_update = responses // u.mini_batches
    if responses % u.mini_batches or per_update % (micro * num_processes):
        raise ValueError(
            f"{responses} responses in {u.mini_batches} mini-batches do not split into micro-batches of {micro} "
            f"on {num_processes} processes"
        )
    return {
        "num_generations": r.samples_per_prompt,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": per_update // (micro * num_processes),
        "steps_per_generation": responses // (micro * num_processes),
        "num_iterations": u.epochs,
        "max_completion_length": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "learning_rate": p.lr,
        "lr_scheduler_type": LR_SCHEDULES[p.schedule],
        "warmup_steps": p.warmup_steps,
        "weight_decay": p.weight_decay,
        "adam_beta1": p.betas[0],
        "adam_beta2": p.betas[1],
        "max_grad_norm": p.grad_clip,
        "max_steps": config.steps * u.mini_batches * u.epochs,
        "save_steps": config.checkpoint_every * u.mini_batches * u.epochs,
        "bf16": config.dtype in ("bfloat16", "bf16"),
        "use_cpu": config.device == "cpu",
        "seed": config.seed,
    }


def gsm8k_prompts(config: sspo.TrainConfig, tokenizer):
    """GSM8K train problems as a ``datasets.Dataset`` of ``prompt`` (the preset's template) and ``answer``."""
    from datasets import Dataset

    from sspo.tasks import format_prompt, load_task

    problems = load_task("gsm8k", "train", path=config.task.path, limit=config.task.train_size)
    return Dataset.from_dict({
        "prompt": [format_prompt(p.question, tokenizer, template=config.task.template) for p in problems],
        "answer": [p.answer for p in problems],
    })  # fmt: skip


def answer_reward(completions, answer, **kwargs) -> list[float]:
    """sspo's verifiable reward: 1.0 when the completion's final answer equals the gold answer."""
    from sspo.rewards import math_reward

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [math_reward(text, gold) for text, gold in zip(texts, answer, strict=True)]


def main(argv=None):
    """Train; returns the ``SSPOGRPOTrainer`` after ``train()``."""
    args = parse_args(argv)
    from sspo.integrations.trl import SSPOGRPOConfig, SSPOGRPOTrainer
    from sspo.models.loading import load_model_and_tokenizer

    config = preset_config(args.objective, args.overrides)
    model = args.model or config.model
    fields = {**grpo_fields(config, int(os.environ.get("WORLD_SIZE", "1"))), **objective_fields(config)}
    if args.max_steps is not None:
        fields["max_steps"] = args.max_steps
    if model == "tiny":  # built here, not on the hub
        model, tokenizer = load_model_and_tokenizer("tiny")
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    trl_config = SSPOGRPOConfig(
        output_dir=args.output_dir, logging_steps=1, report_to=[] if args.report_to == "none" else [args.report_to],
        use_vllm=args.use_vllm, vllm_mode="colocate", vllm_importance_sampling_mode="sequence_truncate", **fields,
    )  # fmt: skip
    trainer = SSPOGRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=answer_reward, args=trl_config,
                              train_dataset=gsm8k_prompts(config, tokenizer))  # fmt: skip
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
