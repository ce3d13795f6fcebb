"""A built-in, offline, seeded generator of GSM8K-style multi-step arithmetic word problems.

Example (default config)::

    question: "Tom has 3 apples. He gets 4 more. He gives 2 away. How many apples does Tom have?"
    solution: "3+4=7. 7-2=5. #### 5"
    answer:   "5"

Texts are short, regular printable ASCII, so a ~1M-parameter model with a character tokenizer can
learn them. A problem is identified by its *canonical form* — the chain of numbers and operations,
e.g. ``"3+4-2"`` — whatever the names and words; a stable hash of that form (independent of the
seed) puts it in ``train`` or ``test``, and sampling rejects problems of the other split. So train
and test never share a problem, for any seeds, and both are unlimited. Intermediate results are
never negative.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sspo.tasks.base import Problem, check_split, hash_split

SPLITS = ("train", "test")
OPERATIONS = "+-*"
NAMES = (("Tom", "He"), ("Ann", "She"), ("Sam", "He"), ("Mia", "She"), ("Ben", "He"), ("Eva", "She"))
OBJECTS = ("apples", "pens", "cards", "eggs", "coins", "books")
PHRASES = {
    "+": ("{p} gets {n} more.", "{p} finds {n} more.", "{p} buys {n} more."),
    "-": ("{p} gives {n} away.", "{p} loses {n}.", "{p} sells {n}."),
    "*": ("{p} then has {n} times as many.",),
}
_MAX_REJECTIONS = 10_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty knobs and seed of the synthetic task (validated on construction)."""

    min_steps: int = 2
    """Fewest operations applied to the starting amount."""
    max_steps: int = 3
    """Most operations applied to the starting amount."""
    max_operand: int = 9
    """The starting amount and every operand are drawn from 1..max_operand (start and factors from 2)."""
    operations: str = "+-"
    """Operations to draw from, any of ``+``, ``-``, ``*``."""
    seed: int = 0
    """Same seed, split and config give the same problems."""
    test_fraction: float = 0.1
    """Share of canonical problems that belong to ``test`` (chosen by hash, not by seed)."""

    def __post_init__(self) -> None:
        """Types and ranges; each message starts with the option's name and says what it may be."""
        for name, low in (("min_steps", 1), ("max_operand", 2)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")
        if not _is_int(self.max_steps) or self.max_steps < self.min_steps:
            raise ValueError(f"max_steps: must be an int >= min_steps ({self.min_steps}), got {self.max_steps!r}")
        if not isinstance(self.operations, str) or not self.operations or set(self.operations) - set(OPERATIONS):
            raise ValueError(f"operations: must be a non-empty string of {OPERATIONS!r}, got {self.operations!r}")
        fraction = self.test_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction < 1.0:
            raise ValueError(f"test_fraction: must be a number in (0, 1), got {fraction!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_of(key: str, test_fraction: float) -> str:
    """The split a canonical problem (e.g. ``"3+4-2"``) belongs to: a stable hash, no seed."""
    return hash_split(key, test_fraction, b"sspo-syn")


def generate(split: str, n: int, config: SyntheticConfig | None = None) -> list[Problem]:
    """``n`` problems of ``split`` (``train`` or ``test``), deterministic in ``config``."""
    check_split(split, SPLITS, "synthetic")
    if n < 0:
        raise ValueError(f"synthetic: n must be >= 0, got {n}")
    config = config or SyntheticConfig()
    rng = random.Random(f"sspo-synthetic:{config.seed}:{split}")
    return [_sample(rng, split, config) for _ in range(n)]


def _sample(rng: random.Random, split: str, config: SyntheticConfig) -> Problem:
    for _ in range(_MAX_REJECTIONS):
        chain = _sample_chain(rng, config)
        if chain is None:
            continue
        key = str(chain[0]) + "".join(f"{op}{n}" for op, n in chain[1:])
        if split_of(key, config.test_fraction) == split:
            return _render(rng, chain, key, split)
    raise ValueError(
        f"synthetic: found no {split!r} problem in {_MAX_REJECTIONS} tries; config {config} is too narrow"
    )


def _sample_chain(rng: random.Random, config: SyntheticConfig) -> list | None:
    """``[start, (op, operand), …]`` with non-negative intermediates, or ``None`` to resample."""
    value = rng.randint(2, config.max_operand)
    chain: list = [value]
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        op = rng.choice(config.operations)
        if op == "+":
            operand = rng.randint(1, config.max_operand)
            value += operand
        elif op == "-":
            if value < 1:
                return None
            operand = rng.randint(1, min(value, config.max_operand))
            value -= operand
        else:
            operand = rng.randint(2, config.max_operand)
            value *= operand
        chain.append((op, operand))
    return chain


def _render(rng: random.Random, chain: list, key: str, split: str) -> Problem:
    name, pronoun = rng.choice(NAMES)
    thing = rng.choice(OBJECTS)
    sentences = [f"{name} has {chain[0]} {thing}."]
    steps = []
    value = chain[0]
    for op, operand in chain[1:]:
        sentences.append(rng.choice(PHRASES[op]).format(p=pronoun, n=operand))
        new = value + operand if op == "+" else value - operand if op == "-" else value * operand
        steps.append(f"{value}{op}{operand}={new}.")
        value = new
    sentences.append(f"How many {thing} does {name} have?")
    return Problem(
        question=" ".join(sentences),
        answer=str(value),
        solution=" ".join(steps) + f" #### {value}",
        meta={"key": key, "steps": len(chain) - 1, "split": split},
    )
