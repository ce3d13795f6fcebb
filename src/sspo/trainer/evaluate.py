"""Held-out evaluation: greedy accuracy and pass@k, by the task's strict success
(:meth:`TaskReward.success_batch`: the final answer is right, or the program passes every test —
for a code task ``eval/accuracy`` is the greedy pass rate).

``pass@k`` uses the unbiased estimator of Chen et al. (2021) with ``n = k`` samples per problem,
which reduces to the fraction of problems with at least one correct sample.
"""

from __future__ import annotations

import torch

from ..tasks import Problem
from .rewards import TaskReward
from .rollout import decode_responses, encode_prompts
from .sampling import sample


def _scores(model, tokenizer, problems, scorer, *, repeats, greedy, max_new_tokens, temperature, template,
            batch_size, generator, backend) -> list[list[float]]:  # fmt: skip
    prompt_ids = encode_prompts(problems, tokenizer, template)
    scores: list[list[float]] = [[] for _ in problems]
    for start in range(0, len(problems), batch_size):
        chunk = list(range(start, min(start + batch_size, len(problems))))
        ids = [prompt_ids[i] for i in chunk for _ in range(repeats)]
        out = sample(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, greedy=greedy,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     generator=generator, return_logprobs=False, backend=backend)  # fmt: skip
        texts = decode_responses(tokenizer, out.response_ids, out.response_mask)
        rewards = scorer.success_batch(texts, [problems[i] for i in chunk for _ in range(repeats)])
        for j, i in enumerate(chunk):
            scores[i] = rewards[j * repeats : (j + 1) * repeats]
    return scores


def evaluate(
    model,
    tokenizer,
    problems: list[Problem],
    scorer: TaskReward,
    *,
    max_new_tokens: int,
    template: str,
    pass_k: int = 0,
    temperature: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    backend: str = "auto",
) -> dict[str, float]:
    """``eval/accuracy`` (greedy) and, if ``pass_k > 0``, ``eval/pass@k`` on ``problems``."""
    common = dict(max_new_tokens=max_new_tokens, template=template, batch_size=max(1, batch_size), backend=backend)
    greedy = _scores(model, tokenizer, problems, scorer, repeats=1, greedy=True, temperature=1.0,
                     generator=None, **common)  # fmt: skip
    metrics = {"eval/accuracy": sum(s[0] for s in greedy) / len(problems), "eval/num_problems": float(len(problems))}
    if pass_k > 0:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        sampled = _scores(
            model, tokenizer, problems, scorer, repeats=pass_k, greedy=False, temperature=temperature,
            generator=generator, **{**common, "batch_size": max(1, batch_size // pass_k)},
        )  # fmt: skip
        metrics[f"eval/pass@{pass_k}"] = sum(max(s) for s in sampled) / len(problems)
        metrics["eval/sample_accuracy"] = sum(sum(s) / len(s) for s in sampled) / len(problems)
    return metrics
