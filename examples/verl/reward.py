"""verl custom reward (``reward.custom_reward_function.path``): verifiable 0/1 rewards.

GSM8K uses verl's strict ``#### answer`` scorer; DeepMath compares the last ``\\boxed{}`` answer with
the reference using math-verify (an sspo dependency).
"""

from __future__ import annotations


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1.0 when the response's final answer equals ``ground_truth``, else 0.0."""
    if data_source == "openai/gsm8k":
        from verl.utils.reward_score import gsm8k

        return float(gsm8k.compute_score(solution_str, ground_truth))
    answer = last_boxed(solution_str)
    if answer is None:
        return 0.0
    from math_verify import parse, verify

    gold, pred = parse(f"${ground_truth}$"), parse(f"${answer}$")
    return float(bool(gold) and bool(pred) and verify(gold, pred))
