"""Throughput of plain-number verification (the fast path of ``sspo.rewards``).

Scores GSM8K-style worked solutions (``… #### N``, half of them against a wrong reference) with
``score_batch`` and with one ``math_reward`` call per item, and prints verifications per second.
The acceptance bar is >= 2,000 per second on 2 cores.

    python benchmarks/rewards_throughput.py [--n 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time


def _workload(n: int) -> tuple[list[str], list[str]]:
    from sspo.tasks.synthetic import SyntheticConfig, generate

    problems = generate("train", n, SyntheticConfig(operations="+-*", max_steps=4, max_operand=99))
    completions, references = [], []
    for i, p in enumerate(problems):
        steps, answer = p.solution.split(" #### ")
        if i % 3:
            completions.append(f"{steps} So the total is {int(answer):,} items.\n#### {answer}")
        else:
            completions.append(f"{steps} The answer is ${answer}.")
        references.append(p.answer if i % 2 else str(int(p.answer) + 1))
    return completions, references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="completions per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the best is reported")
    parser.add_argument(
        "--symbolic", type=int, default=200, help="LaTeX answers for the math-verify path (0: skip)"
    )
    args = parser.parse_args()

    from sspo.rewards import math_reward, score_batch

    completions, references = _workload(args.n)
    batch_best = loop_best = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        rewards, metrics = score_batch(completions, references)
        batch_best = max(batch_best, args.n / (time.perf_counter() - start))
        start = time.perf_counter()
        for completion, reference in zip(completions, references):
            math_reward(completion, reference)
        loop_best = max(loop_best, args.n / (time.perf_counter() - start))
    assert metrics["reward/parse_fail_frac"] == 0.0 and metrics["reward/timeout_frac"] == 0.0, metrics
    assert abs(metrics["reward/mean"] - 0.5) < 0.01, metrics
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print(f"score_batch:  {batch_best:,.0f} plain-number verifications/s")
    print(f"math_reward:  {loop_best:,.0f} plain-number verifications/s (one call per item)")
    if args.symbolic:
        _symbolic(args.symbolic)


def _symbolic(n: int) -> None:
    """LaTeX answers through the math-verify worker pool (2 workers), after warm-up."""
    from sspo.rewards import RewardScorer

    pairs = [
        (f"\\boxed{{\\frac{{{k}\\sqrt{{2}}}}{{2}}}}", f"\\frac{{{k}}}{{\\sqrt{{2}}}}")
        for k in range(1, n + 1)
    ]
    with RewardScorer(workers=2) as scorer:
        scorer.warmup()
        start = time.perf_counter()
        rewards, _ = scorer.score_batch([c for c, _ in pairs], [r for _, r in pairs])
        rate = n / (time.perf_counter() - start)
    assert rewards == [1.0] * n
    print(f"symbolic:     {rate:,.0f} LaTeX verifications/s (math-verify, 2 worker processes)")


if __name__ == "__main__":
    main()
