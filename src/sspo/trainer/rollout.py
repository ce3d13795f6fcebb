"""One rollout batch: P prompts × G samples, rewards, group advantages, behaviour log-probs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..advantages import group_advantages
from ..tasks import Problem, problem_prompt
from ..tasks.prompts import has_chat_template
from .asynchronous.timeline import span
from .policy import response_logprobs_no_grad
from .rewards import TaskReward
from .sampling import sample


@dataclass
class RolloutBatch:
    """Tensors of a rollout batch (``N = P·G`` rows, groups consecutive) and its metrics."""

    input_ids: Tensor
    attention_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    old_log_probs: Tensor
    """Log-probs the ratios are centred on: the behaviour policy's recomputed with the training forward,
    the sampler's, or the current (proximal) policy's (``update.old_logprobs``)."""
    advantages: Tensor
    rewards: Tensor
    groups: Tensor | None = None
    """``[N]`` group id of each row (rows of a group share their prompt)."""
    ref_log_probs: Tensor | None = None
    completions: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    rollout_log_probs: Tensor | None = None
    """The sampler's own log-probs (0 where masked): the ``rollout_log_probs`` of a rollout correction."""

    def select(self, idx: Tensor) -> dict[str, Tensor]:
        """The tensors of rows ``idx``, trimmed to their longest response."""
        width = int(self.response_mask[idx].sum(-1).max().clamp(min=1))
        extra = self.response_ids.shape[1] - width
        cut = slice(None, self.input_ids.shape[1] - extra)
        return {
            "input_ids": self.input_ids[idx][:, cut],
            "attention_mask": self.attention_mask[idx][:, cut],
            "response_ids": self.response_ids[idx][:, :width],
            "response_mask": self.response_mask[idx][:, :width],
            "old_log_probs": self.old_log_probs[idx][:, :width],
            "advantages": self.advantages[idx],
            "ref_log_probs": None if self.ref_log_probs is None else self.ref_log_probs[idx][:, :width],
            "groups": None if self.groups is None else self.groups[idx],
            "rollout_log_probs": None if self.rollout_log_probs is None else self.rollout_log_probs[idx][:, :width],
        }


def encode_prompts(problems: list[Problem], tokenizer, template: str) -> list[list[int]]:
    """Token ids of each problem's formatted prompt (no special tokens added twice)."""
    texts = [problem_prompt(p, tokenizer, template=template) for p in problems]
    chat = template == "chat" or (template == "auto" and has_chat_template(tokenizer))
    add_special = not chat  # a chat template writes its own special tokens
    return [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor) -> list[str]:
    """Response texts (special tokens dropped)."""
    rows = [ids[mask].tolist() for ids, mask in zip(response_ids, response_mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def make_rollout(
    behaviour,
    tokenizer,
    problems: list[Problem],
    scorer: TaskReward,
    *,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    template: str,
    advantage: str,
    generator: torch.Generator,
    backend: str = "auto",
    reference=None,
    recompute: bool = True,
    truncated: str = "drop",
    proximal=None,
    keep_groups: int | None = None,
) -> RolloutBatch:
    """Sample ``G`` responses per problem with ``behaviour``, score them with the task's training reward
    (:meth:`TaskReward.score_batch`), compute advantages. ``recompute``: behaviour log-probs from a no-grad
    training forward of ``behaviour`` (else the sampler's own). ``proximal``: a model (the current
    policy) whose no-grad forward gives the old log-probs instead (decoupled PPO). The sampler's own
    log-probs are kept as ``rollout_log_probs`` whatever the old ones are. ``truncated``: responses with no EOS
    within ``max_new_tokens`` are ``drop``-ped (no loss, left out of their group's advantage
    statistics, reward logged as 0), get reward 0 (``zero``), or are graded as they are (``score``).
    ``keep_groups``: dynamic sampling (``rollout.filter_groups``): keep only the first ``keep_groups``
    groups with a non-zero advantage (:func:`informative_groups`), before any log-prob forward."""
    prompt_ids = [ids for ids in encode_prompts(problems, tokenizer, template) for _ in range(samples_per_prompt)]
    out = sample(
        behaviour, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, generator=generator,
        backend=backend,
    )  # fmt: skip
    completions = decode_responses(tokenizer, out.response_ids, out.response_mask)
    with span("score"):  # marks the rollout worker's timeline; nothing in the synchronous trainer
        rewards_list, reward_metrics = scorer.score_batch(completions, [p for p in problems for _ in range(samples_per_prompt)])
    mask = out.response_mask
    cut = truncated_rows(out.response_ids, mask, tokenizer.eos_token_id)
    rewards = torch.tensor(rewards_list, dtype=torch.float32, device=mask.device)
    reward_metrics["reward/truncated_rewarded_frac"] = float(((rewards > 0) & cut).float().mean())
    if truncated != "score":
        rewards = torch.where(cut, torch.zeros_like(rewards), rewards)
        reward_metrics["reward/mean"] = float(rewards.mean())
    keep = ~cut if truncated == "drop" else None
    advantages, adv_metrics = group_advantages(rewards, samples_per_prompt, method=advantage, valid=keep)
    if keep is not None:
        mask = mask & keep[:, None]  # DAPO's overlong filtering: a dropped response has no loss term
    input_ids, attention_mask, response_ids, sampled = out.input_ids, out.attention_mask, out.response_ids, out.old_log_probs
    lengths = out.response_mask.sum(-1).float()
    group_metrics = {}
    if keep_groups is not None:
        kept = informative_groups(advantages, samples_per_prompt, keep_groups)
        group_metrics = {"rollout/groups_kept": float(len(kept)),
                         "rollout/groups_informative_frac": float(group_signal(advantages, samples_per_prompt).float().mean())}  # fmt: skip
        rows = (kept[:, None] * samples_per_prompt + torch.arange(samples_per_prompt, device=kept.device)).flatten()
        input_ids, attention_mask, response_ids, sampled = (t[rows] for t in (input_ids, attention_mask, response_ids, sampled))
        mask, advantages, rewards = mask[rows], advantages[rows], rewards[rows]
        completions = [completions[i] for i in rows.tolist()]
    groups = torch.arange(input_ids.shape[0], device=mask.device) // samples_per_prompt
    old = sampled
    if recompute and proximal is None:
        old = response_logprobs_no_grad(behaviour, input_ids, attention_mask, response_ids,
                                        temperature=temperature, groups=groups)  # fmt: skip
    old = torch.where(mask, old, torch.zeros_like(old))
    sampler_log_probs = torch.where(mask, sampled, torch.zeros_like(sampled))
    metrics = {
        **reward_metrics,
        **group_metrics,
        **{k: float(v) for k, v in adv_metrics.items()},
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/finished_frac": 1.0 - float(cut.float().mean()),
        "rollout/truncated_frac": float(cut.float().mean()),
        "rollout/tokens": float(lengths.sum()),
    }
    if recompute and proximal is None:
        metrics["rollout/logprob_mismatch_max"] = logprob_mismatch(old, sampled, mask)
    batch = RolloutBatch(input_ids, attention_mask, response_ids, mask, old, advantages, rewards,
                         groups, None, completions, metrics, sampler_log_probs)  # fmt: skip
    return add_learner_log_probs(batch, reference=reference, proximal=proximal, temperature=temperature)


def group_signal(advantages: Tensor, samples_per_prompt: int) -> Tensor:
    """``[P]`` bool: groups with some non-zero advantage (their rewards are not all equal)."""
    return (advantages.view(-1, samples_per_prompt) != 0).any(-1)


def informative_groups(advantages: Tensor, samples_per_prompt: int, keep: int) -> Tensor:
    """Indices of the first ``keep`` groups with some non-zero advantage (rewards not all equal), in
    sampling order; the first group alone when none is (a well-formed batch whose update is skipped)."""
    kept = group_signal(advantages, samples_per_prompt).nonzero().flatten()[:keep]
    return kept if kept.numel() else torch.zeros(1, dtype=torch.long, device=advantages.device)


def sampled_prompts(rollout) -> int:
    """Prompts a step samples: ``prompts_per_step``, times ``oversample`` with ``filter_groups``."""
    return rollout.prompts_per_step * (rollout.oversample if rollout.filter_groups else 1)


def groups_to_keep(rollout) -> int | None:
    """``make_rollout``'s ``keep_groups`` for a :class:`RolloutConfig`: ``P`` with ``filter_groups``."""
    return rollout.prompts_per_step if rollout.filter_groups else None


def add_learner_log_probs(batch: RolloutBatch, *, reference=None, proximal=None, temperature: float) -> RolloutBatch:
    """The no-grad forwards the learner makes on a sampled batch: the reference policy's log-probs (for
    the KL penalty) and, with ``proximal`` (the current policy), the old log-probs of decoupled PPO.
    The sampler's own log-probs stay in ``rollout_log_probs``. Returns ``batch``, updated in place."""
    args = (batch.input_ids, batch.attention_mask, batch.response_ids)
    zero = torch.zeros((), dtype=batch.old_log_probs.dtype, device=batch.old_log_probs.device)
    if proximal is not None:
        old = response_logprobs_no_grad(proximal, *args, temperature=temperature, groups=batch.groups)
        batch.old_log_probs = torch.where(batch.response_mask, old, zero)
    if reference is not None:
        batch.ref_log_probs = response_logprobs_no_grad(reference, *args, temperature=temperature, groups=batch.groups)
    return batch


def problems_for(problems: list[Problem], seed: int, prompts_per_step: int, step: int) -> list[Problem]:
    """The ``prompts_per_step`` problems of training step ``step`` (1-based): passes over the pool in a
    fresh seeded order each, so every step's problems follow from ``(seed, step)`` alone."""
    from .loop import seeded  # the trainer's stateless generators

    pool = len(problems)
    perms: dict[int, torch.Tensor] = {}  # one shuffle per pass over the pool
    out = []
    for pos in range((step - 1) * prompts_per_step, step * prompts_per_step):
        epoch, offset = divmod(pos, pool)
        if epoch not in perms:
            perms[epoch] = torch.randperm(pool, generator=seeded(seed, 1, epoch))
        out.append(problems[int(perms[epoch][offset])])
    return out


def truncated_rows(response_ids: Tensor, response_mask: Tensor, eos_token_id: int | None) -> Tensor:
    """``[N]`` bool: responses that hold no EOS (cut off at ``max_new_tokens``; all of them without an EOS id)."""
    if eos_token_id is None:
        return torch.ones(response_ids.shape[0], dtype=torch.bool, device=response_ids.device)
    return ~((response_ids == eos_token_id) & response_mask).any(-1)


def logprob_mismatch(trainer_log_probs: Tensor, sampler_log_probs: Tensor, mask: Tensor) -> float:
    """``max |log π_trainer − log π_sampler|`` over response tokens (numerical drift between the two)."""
    return float((trainer_log_probs - sampler_log_probs).abs().masked_fill(~mask, 0).max())
