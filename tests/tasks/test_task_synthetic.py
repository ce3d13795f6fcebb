"""The synthetic arithmetic task: determinism, disjoint splits, self-consistent worked solutions."""

import re

import pytest

from sspo.rewards import score_batch
from sspo.tasks import SyntheticConfig, load_task
from sspo.tasks.synthetic import generate, split_of


def _keys(problems):
    return {p.meta["key"] for p in problems}


def test_same_seed_same_problems_other_seed_other_problems():
    config = SyntheticConfig(seed=3)
    assert generate("train", 200, config) == generate("train", 200, config)
    assert generate("train", 200, config) != generate("train", 200, SyntheticConfig(seed=4))
    assert load_task("synthetic", "test", limit=50, seed=3) == generate("test", 50, config)


def test_prefix_stability_unlimited_stream():
    config = SyntheticConfig(seed=1)
    assert generate("train", 3000, config)[:100] == generate("train", 100, config)


@pytest.mark.parametrize("operations", ["+-", "+-*", "*"])
def test_train_and_test_never_share_a_problem_across_seeds(operations):
    train = [
        p
        for seed in range(3)
        for p in generate("train", 1000, SyntheticConfig(seed=seed, operations=operations))
    ]
    test = [
        p
        for seed in range(3)
        for p in generate("test", 300, SyntheticConfig(seed=seed, operations=operations))
    ]
    assert not _keys(train) & _keys(test)
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.meta["key"], 0.1) == "train" for p in train)
    assert all(split_of(p.meta["key"], 0.1) == "test" for p in test)


def test_every_worked_solution_scores_one_against_its_answer():
    problems = generate("train", 1000, SyntheticConfig(operations="+-*", max_steps=4)) + generate("test", 300)
    rewards, metrics = score_batch([p.solution for p in problems], [p.answer for p in problems])
    assert rewards == [1.0] * len(problems)
    assert metrics["reward/mean"] == 1.0


def test_solution_arithmetic_is_right_and_never_negative():
    for problem in generate("train", 500, SyntheticConfig(operations="+-*", max_steps=5)):
        body, answer = problem.solution.split(" #### ")
        steps = re.findall(r"(\d+)([-+*])(\d+)=(\d+)\.", body)
        assert len(steps) == problem.meta["steps"]
        value = int(steps[0][0])
        for left, op, right, result in steps:
            assert int(left) == value
            value = {"+": value + int(right), "-": value - int(right), "*": value * int(right)}[op]
            assert value == int(result) >= 0
        assert str(value) == answer == problem.answer


def test_default_texts_are_short_printable_ascii():
    problems = generate("train", 2000) + generate("test", 500)
    for p in problems:
        text = p.question + p.solution
        assert text.isascii() and text.isprintable(), text
        assert len(p.question) <= 105 and len(p.solution) <= 40, p
        assert 2 <= p.meta["steps"] <= 3
    assert max(int(n) for p in problems for n in re.findall(r"\d+", p.question)) <= 9


def test_difficulty_knobs():
    problems = generate(
        "train", 300, SyntheticConfig(min_steps=5, max_steps=5, max_operand=50, operations="+")
    )
    assert all(p.meta["steps"] == 5 and "-" not in p.solution and "*" not in p.solution for p in problems)
    assert max(int(n) for p in problems for n in re.findall(r"\d+", p.question)) > 9


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_steps": 0}, "min_steps"),
        ({"min_steps": 3, "max_steps": 2}, "max_steps"),
        ({"max_operand": 1}, "max_operand"),
        ({"operations": "+/"}, "operations"),
        ({"operations": ""}, "operations"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**kwargs)


def test_split_and_size_errors():
    with pytest.raises(ValueError, match="'validation'"):
        generate("validation", 1)
    with pytest.raises(ValueError, match="'validation'"):
        load_task("synthetic", "validation")
    with pytest.raises(ValueError, match="n must be"):
        generate("train", -1)
    with pytest.raises(ValueError, match="no path"):
        load_task("synthetic", path="x.jsonl")
