"""Execution rewards for coding tasks: untrusted programs judged outside their own reach.

>>> from sspo.rewards.code import code_reward
>>> code_reward("def add(a, b):\\n    return a + b", tests="def check(c):\\n    assert c(1, 2) == 3\\n",
...             entry_point="add")
1.0

Modules: :mod:`.extract` (the program in a completion), :mod:`.codec` (plain data across the
boundary), :mod:`.sandbox` (the warm zygote and its isolated children), :mod:`.judge` (the trusted
``check`` with a proxy candidate), :mod:`.scorer` (the public API). Threat model, layers and
throughput: ``docs/code_tasks.md``.
"""

from sspo.rewards.code.extract import extract_code
from sspo.rewards.code.scorer import (
    CODE_METRIC_KEYS,
    CODE_STATUSES,
    CodeGrade,
    CodeScorer,
    code_metrics,
    code_reward,
    program_text,
)

__all__ = [
    "CODE_METRIC_KEYS",
    "CODE_STATUSES",
    "CodeGrade",
    "CodeScorer",
    "code_metrics",
    "code_reward",
    "extract_code",
    "program_text",
]
