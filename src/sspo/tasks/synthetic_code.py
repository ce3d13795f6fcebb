"""A built-in, offline, seeded coding task: write a one-line function from input/output examples.

Example (default config)::

    question: "f(4)=13\\nf(0)=1\\nf(7)=22"
    solution: "def f(x): return x*3+1"
    tests:    "def check(candidate):\\n    assert candidate(4) == 13\\n    ...\\n    assert candidate(9) == 28\\n"

The model sees ``num_examples`` calls of a hidden function ``f`` and writes it; the execution reward
runs the program against the shown examples **and** ``num_hidden`` calls it never saw, so a program
that only memorises the examples fails. Any program that behaves like ``f`` passes (``x+x`` for
``x*2``). Functions come from small families (:data:`FAMILIES`): integer arithmetic on ``x`` in
``0..9`` and string slicing/methods on words of 3-5 letters from ``abcde``. Examples are chosen so that they
determine the function: no other function of the family agrees with every example and differs on a
hidden call.

A problem is identified by its *canonical form*, the function and the shown inputs (e.g.
``x*3+1|4,0,7``); a stable hash of that form (independent of the seed) puts it in ``train`` or
``test``, and sampling rejects problems of the other split. So train and test never share a problem
for any seeds, and both are unlimited; the same function may appear in both with other examples, so
the held-out pass rate measures inferring a function from new examples. Texts are short, printable
ASCII: the tiny model with its character tokenizer can learn them.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from sspo.tasks.base import CodeProblem, check_split, hash_split

SPLITS = ("train", "test")
ENTRY_POINT = "f"
INT_INPUTS = range(10)
"""Inputs of the ``int`` family (shown and hidden)."""
LETTERS = "abcde"
"""Letters of the words of the ``str`` family (a small alphabet makes ``count`` and ``replace`` matter)."""
_MAX_REJECTIONS = 10_000


Group = tuple[tuple[str, Callable], ...]
"""Functions of one shape, e.g. ``x+1`` ... ``x+9``: ``(expression in x, the same as a Python callable)``."""


def _int_family() -> list[Group]:
    r = range
    return [
        tuple((f"x+{b}", lambda x, b=b: x + b) for b in r(1, 10)),
        tuple((f"x-{b}", lambda x, b=b: x - b) for b in r(1, 10)),
        tuple((f"{c}-x", lambda x, c=c: c - x) for c in r(1, 10)),
        tuple((f"x*{a}", lambda x, a=a: x * a) for a in r(2, 10)),
        tuple((f"x*{a}+{b}", lambda x, a=a, b=b: x * a + b) for a in r(2, 6) for b in r(1, 6)),
        (("x*x", lambda x: x * x),),
        tuple((f"x*x+{c}", lambda x, c=c: x * x + c) for c in r(1, 10)),
        tuple((f"x//{d}", lambda x, d=d: x // d) for d in r(2, 6)),
        tuple((f"x%{d}", lambda x, d=d: x % d) for d in r(2, 6)),
        tuple((f"max(x,{c})", lambda x, c=c: max(x, c)) for c in r(2, 8)),
        tuple((f"min(x,{c})", lambda x, c=c: min(x, c)) for c in r(2, 8)),
    ]


def _str_family() -> list[Group]:
    single = [
        ("x[::-1]", lambda x: x[::-1]), ("x.upper()", lambda x: x.upper()), ("x+x", lambda x: x + x),
        ("x*3", lambda x: x * 3), ("x[1:]", lambda x: x[1:]), ("x[:-1]", lambda x: x[:-1]),
        ("x[0]", lambda x: x[0]), ("x[-1]", lambda x: x[-1]), ("len(x)", lambda x: len(x)),
        ("x[1:]+x[0]", lambda x: x[1:] + x[0]), ("x[-1]+x[:-1]", lambda x: x[-1] + x[:-1]),
        ("x[::2]", lambda x: x[::2]), ("''.join(sorted(x))", lambda x: "".join(sorted(x))),
        ("x+x[::-1]", lambda x: x + x[::-1]), ("x[0]+x[-1]", lambda x: x[0] + x[-1]),
    ]  # fmt: skip
    return [
        *(((expression, fn),) for expression, fn in single),
        tuple((f"x[:{k}]", lambda x, k=k: x[:k]) for k in (2, 3)),
        tuple((f"x[{k}:]", lambda x, k=k: x[k:]) for k in (2, 3)),
        tuple((f"x+'{c}'", lambda x, c=c: x + c) for c in LETTERS),
        tuple((f"'{c}'+x", lambda x, c=c: c + x) for c in LETTERS),
        tuple((f"x.count('{c}')", lambda x, c=c: x.count(c)) for c in LETTERS),
        tuple((f"x.replace('{c}','{d}')", lambda x, c=c, d=d: x.replace(c, d)) for c in LETTERS for d in LETTERS
              if c != d),  # fmt: skip
    ]


FAMILIES: dict[str, Callable[[], list[Group]]] = {"int": _int_family, "str": _str_family}
"""Function families by name, each a list of groups of functions of one shape. A problem draws a family,
then a group, then a function (uniformly each time), so that no shape crowds out the others."""


@functools.cache
def family(name: str) -> tuple[Group, ...]:
    """The groups of family ``name`` (built once)."""
    return tuple(FAMILIES[name]())


@dataclass(frozen=True)
class SyntheticCodeConfig:
    """Knobs and seed of the synthetic coding task (validated on construction; messages name the option)."""

    families: str = "int,str"
    """Comma-separated function families to draw from (:data:`FAMILIES`: ``int``, ``str``)."""
    num_examples: int = 3
    """Calls of ``f`` shown in the question."""
    num_hidden: int = 3
    """Further calls the tests make that the question does not show."""
    seed: int = 0
    """Same seed, split and config give the same problems."""
    test_fraction: float = 0.1
    """Share of canonical problems that belong to ``test`` (chosen by hash, not by seed)."""

    def __post_init__(self) -> None:
        names = [n.strip() for n in str(self.families).split(",")]
        if not names or any(n not in FAMILIES for n in names):
            raise ValueError(f"families: must be a comma-separated list of {', '.join(FAMILIES)}, got {self.families!r}")
        for name, value, low in (("num_examples", self.num_examples, 1), ("num_hidden", self.num_hidden, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")
        if self.num_examples + self.num_hidden > len(INT_INPUTS):
            raise ValueError(f"num_examples + num_hidden: must be <= {len(INT_INPUTS)} (the distinct integer inputs), "
                             f"got {self.num_examples + self.num_hidden}")  # fmt: skip
        fraction = self.test_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction < 1.0:
            raise ValueError(f"test_fraction: must be in (0, 1), got {fraction!r}")

    @property
    def family_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.families.split(","))


def split_of(key: str, test_fraction: float) -> str:
    """The split a canonical problem (e.g. ``"x*3+1|4,0,7"``) belongs to: a stable hash, no seed."""
    return hash_split(key, test_fraction, b"sspo-code")


def generate(split: str, n: int, config: SyntheticCodeConfig | None = None) -> list[CodeProblem]:
    """``n`` problems of ``split`` (``train`` or ``test``), deterministic in ``config``."""
    check_split(split, SPLITS, "synthetic_code")
    if n < 0:
        raise ValueError(f"synthetic_code: n must be >= 0, got {n}")
    config = config or SyntheticCodeConfig()
    rng = random.Random(f"sspo-synthetic-code:{config.seed}:{split}")
    return [_sample(rng, split, config) for _ in range(n)]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5)))


def _inputs(rng: random.Random, kind: str, count: int) -> list:
    if kind == "int":
        return rng.sample(list(INT_INPUTS), count)
    words: list[str] = []
    while len(words) < count:
        word = _word(rng)
        if word not in words:
            words.append(word)
    return words


def _determined(kind: str, fn: Callable, shown: list, hidden: list) -> bool:
    """Whether every function of the family that agrees with ``fn`` on ``shown`` also agrees on ``hidden``."""
    outputs = [fn(x) for x in shown]
    want = [fn(x) for x in hidden]
    for _, other in (member for group in family(kind) for member in group):
        if [other(x) for x in shown] == outputs and [other(x) for x in hidden] != want:
            return False
    return True


def _sample(rng: random.Random, split: str, config: SyntheticCodeConfig) -> CodeProblem:
    for _ in range(_MAX_REJECTIONS):
        kind = rng.choice(config.family_names)
        expression, fn = rng.choice(rng.choice(family(kind)))
        calls = _inputs(rng, kind, config.num_examples + config.num_hidden)
        shown, hidden = calls[: config.num_examples], calls[config.num_examples :]
        key = f"{expression}|{','.join(map(str, shown))}"
        if split_of(key, config.test_fraction) != split or not _determined(kind, fn, shown, hidden):
            continue
        return _render(expression, fn, shown, hidden, kind, key, split)
    raise ValueError(f"synthetic_code: found no {split!r} problem in {_MAX_REJECTIONS} tries; config {config} is too narrow")


def _render(expression: str, fn: Callable, shown: list, hidden: list, kind: str, key: str, split: str) -> CodeProblem:
    question = "\n".join(f"{ENTRY_POINT}({x!r})={fn(x)!r}" for x in shown)
    asserts = "".join(f"    assert candidate({x!r}) == {fn(x)!r}\n" for x in shown + hidden)
    return CodeProblem(
        question=question,
        solution=f"def {ENTRY_POINT}(x): return {expression}",
        tests="def check(candidate):\n" + asserts,
        entry_point=ENTRY_POINT,
        meta={"key": key, "expression": expression, "family": kind, "split": split},
    )
