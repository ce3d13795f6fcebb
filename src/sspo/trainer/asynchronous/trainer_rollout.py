"""What the trainer's rollout workers run: the synchronous trainer's rollout of a step, made with the
worker's copy of the policy (:class:`TrainerRollout`), and the copy itself (:func:`policy_copy`).

A worker samples and scores (every task, code rewards in the sandbox); the learner then makes the
forwards that need its own models (the reference policy's log-probs, the proximal policy's for decoupled
PPO: :func:`sspo.trainer.rollout.add_learner_log_probs`). The step's problems and sampling seed follow
from ``(seed, step)`` alone, so a step generated again (a dropped batch, a dead worker) samples the same
prompts with the same seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

_SCORERS: dict[int, Any] = {}
"""The task reward of each :class:`TrainerRollout` in this process (built on first use: a code task's
sandbox starts in the worker, not in the learner)."""


def _identity(model: torch.nn.Module) -> torch.nn.Module:
    return model


def policy_copy(model: torch.nn.Module, dtype: torch.dtype | None = None):
    """``WorkerSpec.build_model``: a frozen copy of ``model`` (in the sampler's ``dtype``, if given),
    pickled once into each worker; its weights are replaced from the weight channel before every step."""
    import copy

    clone = copy.deepcopy(model).cpu().eval()
    if dtype is not None:
        clone = clone.to(dtype)
    for p in clone.parameters():
        p.requires_grad_(False)
    return functools.partial(_identity, clone)


@dataclass(frozen=True)
class TrainerRollout:
    """``WorkerSpec.rollout``: ``(model, step) -> RolloutBatch``, the rollout the synchronous trainer makes
    for ``step``, without the learner's forwards (no reference, no proximal policy)."""

    config: Any
    """The run's :class:`~sspo.trainer.config.TrainConfig`."""
    tokenizer: Any
    train_problems: list
    recompute: bool
    """Old log-probs from a training-style forward of the worker's model (``update.old_logprobs=recompute``)."""

    def __call__(self, model: torch.nn.Module, step: int):
        from ..loop import seeded
        from ..rewards import task_reward
        from ..rollout import groups_to_keep, make_rollout, problems_for, sampled_prompts

        c = self.config
        key = id(self)
        if key not in _SCORERS:
            _SCORERS[key] = task_reward(c)
        problems = problems_for(self.train_problems, c.seed, sampled_prompts(c.rollout), step)
        device = next(model.parameters()).device
        return make_rollout(
            model, self.tokenizer, problems, _SCORERS[key],
            samples_per_prompt=c.rollout.samples_per_prompt, max_new_tokens=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature, top_p=c.rollout.top_p, template=c.task.template,
            advantage=c.objective.advantage, generator=seeded(c.seed, 2, step, device=device),
            backend=c.rollout.backend, recompute=self.recompute, truncated=c.rollout.truncated,
            keep_groups=groups_to_keep(c.rollout),
        )  # fmt: skip
