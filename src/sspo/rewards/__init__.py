"""Verifiable math rewards: final-answer extraction and bounded-time comparison.

>>> from sspo.rewards import math_reward
>>> math_reward("3+4=7. #### 7", "7")
1.0

See ``docs/tasks_and_rewards.md`` for the extraction order, the time bound and the metrics, and
``docs/code_tasks.md`` for the execution reward of coding tasks (:func:`code_reward`).
"""

from sspo.rewards.code import (
    CODE_METRIC_KEYS,
    CODE_STATUSES,
    CodeGrade,
    CodeScorer,
    code_metrics,
    code_reward,
    extract_code,
)
from sspo.rewards.extract import extract_final_answer
from sspo.rewards.numbers import parse_number
from sspo.rewards.scoring import (
    METRIC_KEYS,
    Grade,
    RewardScorer,
    grade,
    grade_metrics,
    math_reward,
    score_batch,
)
from sspo.rewards.symbolic import STATUSES, SymbolicVerifier, is_safe_expression

__all__ = [
    "CODE_METRIC_KEYS",
    "CODE_STATUSES",
    "CodeGrade",
    "CodeScorer",
    "code_metrics",
    "code_reward",
    "extract_code",
    "METRIC_KEYS",
    "STATUSES",
    "Grade",
    "RewardScorer",
    "SymbolicVerifier",
    "extract_final_answer",
    "grade",
    "grade_metrics",
    "is_safe_expression",
    "math_reward",
    "parse_number",
    "score_batch",
]
