"""A tiny, fast training configuration shared by the trainer tests."""

from sspo.trainer import load_config

TINY = [
    "model=tiny", "task.template=raw", "task.train_size=64", "warm_start.steps=0",
    "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
    "eval.num_problems=4", "eval.batch_size=4", "progress=false", "threads=1", "objective.entropy_coef=0.01",
    # an untrained model rarely stops within 8 tokens: grade its cut-off responses instead of dropping them all
    "rollout.truncated=score",
]  # fmt: skip


def tiny_config(tmp_path, *overrides):
    return load_config(None, [*TINY, f"out_dir={tmp_path}", *overrides])
