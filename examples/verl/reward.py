"""verl custom reward (``reward.custom_reward_function.path``): verifiable rewards for math and code.

* GSM8K uses verl's strict ``#### answer`` scorer; DeepMath compares the last ``\\boxed{}`` answer with
  the reference using math-verify (an sspo dependency).
* Code data sources (:data:`CODE_SOURCES`, written by ``preprocess.py --only leetcode``) run the
  response's program against the problem's tests with sspo's execution reward: the program is the
  response's last fenced Python block, run in sspo's sandbox, and only ``check`` returning in the
  trusted judge counts (docs/code_tasks.md). ``ground_truth`` is JSON with ``tests``, ``entry_point``
  and ``prefix``. Each verl reward worker holds one scorer of ``SSPO_CODE_WORKERS`` sandboxed judges
  (default: two per core shared among verl's ``reward.num_workers`` = 8 workers); the program timeout
  is ``SSPO_CODE_TIMEOUT`` seconds (default 5) and its memory ``SSPO_CODE_MEMORY_MB`` (default 1024).
"""

from __future__ import annotations

import json
import os
import threading

CODE_SOURCES = ("newfacade/LeetCodeDataset", "openai/openai_humaneval")
"""``data_source`` values scored by running tests."""
REWARD_WORKERS = 8
"""verl's default ``reward.num_workers``: processes that each hold a scorer."""

_scorer = None
_scorer_lock = threading.Lock()


def code_scorer():
    """This process's :class:`sspo.rewards.CodeScorer` (started on first use, thread-safe)."""
    global _scorer
    with _scorer_lock:
        if _scorer is None:
            from sspo.rewards import CodeScorer

            default = max(2, 2 * len(os.sched_getaffinity(0)) // REWARD_WORKERS)
            _scorer = CodeScorer(
                int(os.environ.get("SSPO_CODE_WORKERS", default)),
                timeout=float(os.environ.get("SSPO_CODE_TIMEOUT", 5.0)),
                memory_mb=int(os.environ.get("SSPO_CODE_MEMORY_MB", 1024)),
            )
        return _scorer


def code_score(solution_str: str, ground_truth: str) -> float:
    """1.0 when the response's program passes every test of ``ground_truth`` (JSON), else 0.0."""
    spec = json.loads(ground_truth)
    problem = {"tests": spec["tests"], "entry_point": spec["entry_point"], "prefix": spec.get("prefix", "")}
    return code_scorer().score(solution_str, problem)


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
    """1.0 when the response's final answer equals ``ground_truth`` (or its program passes the tests), else 0.0."""
    if data_source in CODE_SOURCES:
        return code_score(solution_str, ground_truth)
    if data_source == "openai/gsm8k":
        from verl.utils.reward_score import gsm8k

        return float(gsm8k.compute_score(solution_str, ground_truth))
    answer = last_boxed(solution_str)
    if answer is None:
        return 0.0
    from math_verify import parse, verify

    gold, pred = parse(f"${ground_truth}$"), parse(f"${answer}$")
    return float(bool(gold) and bool(pred) and verify(gold, pred))
