"""TRL GRPO on GSM8K with any sspo objective (generation, rewards, logging stay TRL's).

    python examples/trl/train_gsm8k.py --objective sspo                    # transformers generation
    python examples/trl/train_gsm8k.py --objective gspo --use-vllm         # vLLM colocated generation
    accelerate launch --num_processes 8 examples/trl/train_gsm8k.py --objective sspo

Needs `pip install 'sspo[trl]'` and the Hugging Face hub (model and ``openai/gsm8k``).
"""

from __future__ import annotations

import argparse
import re

OBJECTIVE_KNOBS = {  # TRL knobs that carry each objective's SPEC defaults
    "grpo": {"epsilon": 0.2, "epsilon_high": 0.28},
    "gspo": {"epsilon": 3e-4, "epsilon_high": 4e-4},
    "gspo_token": {"epsilon": 3e-4, "epsilon_high": 4e-4},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="sspo", help="an objective of sspo.OBJECTIVES")
    parser.add_argument("--gate", default="arctan", help="SSPO gate (arctan | sigmoid | gaussian)")
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("--output-dir", default="runs/trl-gsm8k")
    parser.add_argument("--use-vllm", action="store_true")
    parser.add_argument("--max-steps", type=int, default=500)
    return parser.parse_args(argv)


def answer_reward(completions, answer, **kwargs):
    """1.0 when the last number of the completion equals the reference answer after ``####``."""
    rewards = []
    for completion, ref in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
        gold = ref.split("####")[-1].strip().replace(",", "")
        rewards.append(float(bool(numbers) and numbers[-1].replace(",", "").rstrip(".") == gold))
    return rewards


def main(argv=None):
    args = parse_args(argv)
    from datasets import load_dataset

    from sspo.integrations.trl import SSPOGRPOConfig, SSPOGRPOTrainer

    data = load_dataset("openai/gsm8k", "main", split="train")
    data = data.map(lambda ex: {"prompt": [{"role": "user", "content": ex["question"]}]})
    config = SSPOGRPOConfig(
        output_dir=args.output_dir, sspo_objective=args.objective, sspo_gate=args.gate,
        num_generations=8, per_device_train_batch_size=16, gradient_accumulation_steps=4,
        max_completion_length=1024, learning_rate=1e-6, max_steps=args.max_steps, bf16=True,
        logging_steps=1, report_to=["tensorboard"], use_vllm=args.use_vllm, vllm_mode="colocate",
        vllm_importance_sampling_mode="sequence_truncate", **OBJECTIVE_KNOBS.get(args.objective, {}),
    )  # fmt: skip
    trainer = SSPOGRPOTrainer(model=args.model, reward_funcs=answer_reward, args=config, train_dataset=data)
    trainer.train()


if __name__ == "__main__":
    main()
