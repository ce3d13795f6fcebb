"""TRL GRPO on LeetCodeDataset with any sspo objective and sspo's execution reward (generation and logging
stay TRL's; the loss is sspo's, and each program runs against its problem's tests in sspo's sandbox).

    python examples/trl/train_leetcode.py --objective sspo                       # Qwen2.5-7B-Instruct, hub data
    python examples/trl/train_leetcode.py --objective sspo task.path=../shared/data/code --use-vllm
    accelerate launch --num_processes 8 examples/trl/train_leetcode.py --objective grpo

The shape comes from the preset ``qwen2.5-7b-leetcode-<objective>`` (``configs/``; trailing
``section.field=value`` arguments override it) through ``train_gsm8k.grpo_fields``; the reward is
:class:`sspo.integrations.trl.CodeRewardFunc` with the preset's ``rollout.reward_timeout`` and
``rollout.code_memory_mb`` (``task.reward=partial``: the fraction of assertions that held). The
dataset's columns ``tests``, ``entry_point`` and ``prefix`` reach the reward function; prompts hold
the problem and its starter code, never the reference solution. ``--model tiny`` is sspo's built-in
tiny model (CPU smoke runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_gsm8k's helpers, also when imported by path

from train_gsm8k import grpo_fields, objective_fields, parse_args, preset_config  # noqa: E402

PRESET = "qwen2.5-7b-leetcode"


def leetcode_dataset(config, tokenizer):
    """LeetCodeDataset train problems as a ``datasets.Dataset`` of ``prompt`` (the preset's template),
    ``tests``, ``entry_point`` and ``prefix``."""
    from datasets import Dataset

    from sspo.tasks import load_task, problem_prompt

    t = config.task
    problems = load_task(t.name, t.train_split, path=t.path, limit=t.train_size, **t.options)
    return Dataset.from_dict({
        "prompt": [problem_prompt(p, tokenizer, template=t.template) for p in problems],
        "tests": [p.tests for p in problems],
        "entry_point": [p.entry_point for p in problems],
        "prefix": [p.prefix for p in problems],
    })  # fmt: skip


def main(argv=None):
    """Train; returns the ``SSPOGRPOTrainer`` after ``train()``."""
    args = parse_args(argv)
    from sspo.integrations.trl import CodeRewardFunc, SSPOGRPOConfig, SSPOGRPOTrainer
    from sspo.models.loading import load_model_and_tokenizer

    config = preset_config(args.objective, args.overrides, preset=PRESET)
    model = args.model or config.model
    fields = {**grpo_fields(config, int(os.environ.get("WORLD_SIZE", "1"))), **objective_fields(config)}
    if args.max_steps is not None:
        fields["max_steps"] = args.max_steps
    if model == "tiny":  # built here, not on the hub
        model, tokenizer = load_model_and_tokenizer("tiny")
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    output_dir = args.output_dir if args.output_dir != "runs/trl-gsm8k" else "runs/trl-leetcode"
    trl_config = SSPOGRPOConfig(
        output_dir=output_dir, logging_steps=1, report_to=[] if args.report_to == "none" else [args.report_to],
        use_vllm=args.use_vllm, vllm_mode="colocate", vllm_importance_sampling_mode="sequence_truncate", **fields,
    )  # fmt: skip
    reward = CodeRewardFunc(timeout=config.rollout.reward_timeout, memory_mb=config.rollout.code_memory_mb,
                            partial=config.task.reward == "partial", workers=config.rollout.reward_workers)  # fmt: skip
    trainer = SSPOGRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=trl_config,
                              train_dataset=leetcode_dataset(config, tokenizer))  # fmt: skip
    try:
        trainer.train()
    finally:
        reward.close()
    return trainer


if __name__ == "__main__":
    main()
