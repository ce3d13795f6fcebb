"""The shown-work check: true, chained equations that end in the final answer."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo.rewards.work import work_is_consistent
from sspo.tasks.synthetic import SyntheticConfig, generate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8+4=12. 12+4=16. #### 16", True),
        ("8+3=11. 11+5=16. #### 16", True),  # true and chained: the check does not know the question
        ("4-1=3. 3-3=0. #### 0", True),
        ("6*3=18. 18 - 5 = 13. #### 13", True),
        ("8+4=13. 13+3=16. #### 16", False),  # a false equation
        ("8+4=12. 11+5=16. #### 16", False),  # the chain breaks
        ("8+4=13. 13+3=15. #### 16", False),  # the answer does not follow from the work
        ("8+4=12. 12+4=16. #### 15", False),
        ("#### 5", False),  # no work shown
        ("5+4=e#### 5", False),
        ("", False),
    ],
)
def test_examples(text, expected):
    assert work_is_consistent(text) is expected


def test_every_worked_solution_of_the_synthetic_task_passes():
    problems = generate("train", 500, SyntheticConfig(min_steps=1, max_steps=4, max_operand=20, operations="+-*"))
    assert all(work_is_consistent(p.solution) for p in problems)


@given(st.lists(st.integers(0, 50), min_size=2, max_size=5), st.integers(-3, 3))
def test_a_changed_result_fails(operands, delta):
    start, *rest = operands
    steps, value = [], start
    for b in rest:
        steps.append(f"{value}+{b}={value + b}.")
        value += b
    good = " ".join(steps) + f" #### {value}"
    assert work_is_consistent(good)
    if delta:
        assert not work_is_consistent(good.replace(f"#### {value}", f"#### {value + delta}"))
        last = steps[-1].rsplit("=", 1)
        assert not work_is_consistent(" ".join(steps[:-1] + [f"{last[0]}={value + delta}."]) + f" #### {value + delta}")
