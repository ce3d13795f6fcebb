"""Coding tasks: the HumanEval and LeetCodeDataset loaders (in-repo rows, gzipped files, directories), their
prompts, and the built-in synthetic coding task (determinism, disjoint splits, hidden tests that decide).

Programs run in the code sandbox (``sspo.rewards.CodeScorer``), as the trainer runs them.
"""

import ast
import gzip
import json
from pathlib import Path

import pytest

from sspo.rewards import CodeScorer
from sspo.tasks import (
    CODE_INSTRUCTION,
    DEFAULT_INSTRUCTION,
    CodeProblem,
    SyntheticCodeConfig,
    check_task_options,
    is_code_task,
    load_task,
    problem_prompt,
    task_options,
)
from sspo.tasks.synthetic_code import family, generate

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "code"

HUMANEVAL_ROWS = [
    {"task_id": "Toy/0", "entry_point": "double",
     "prompt": 'import math\n\n\ndef double(x: int) -> int:\n    """Twice x.\n    >>> double(2)\n    4\n    """\n',
     "canonical_solution": "    return x * 2\n",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-1) == -2\n"},
    {"task_id": "Toy/1", "entry_point": "root",
     "prompt": 'import math\n\n\ndef root(x: float) -> float:\n    """Square root."""\n',
     "canonical_solution": "    return math.sqrt(x)\n",
     "test": "def check(candidate):\n    assert candidate(9.0) == 3.0\n"},
]  # fmt: skip
IMPORTS = "from typing import *\nfrom collections import *\n"
LEETCODE_ROWS = [
    {"task_id": "toy-sum", "query": "Return a + b.\n```python\nclass Solution:\n    def add(self, a: int, b: int) -> int:\n```",
     "prompt": IMPORTS, "completion": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n",
     "entry_point": "Solution().add", "test": "def check(candidate):\n    assert candidate(a=1, b=2) == 3\n",
     "meta": {"difficulty": "Easy"}},
    {"task_id": "toy-count", "query": "Count the distinct values.\n```python\nclass Solution:\n    def count(self, nums: List[int]) -> int:\n```",
     "prompt": IMPORTS, "completion": "class Solution:\n    def count(self, nums: List[int]) -> int:\n        return len(Counter(nums))\n",
     "entry_point": "Solution().count", "test": "def check(candidate):\n    assert candidate(nums=[1, 1, 2]) == 2\n",
     "difficulty": "Medium"},
]  # fmt: skip


def _write(path: Path, rows) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scorer():
    with CodeScorer(workers=2, timeout=5.0) as scorer:
        yield scorer


def _passes(scorer, programs, problems) -> list[str]:
    return [g.status for g in scorer.grade_batch(programs, problems)]


# ----------------------------------------------------------------------------- HumanEval and LeetCode
def test_humaneval_from_a_gzipped_file_and_a_directory(tmp_path, scorer):
    _write(tmp_path / "humaneval.jsonl.gz", HUMANEVAL_ROWS)
    problems = load_task("humaneval", "test", path=str(tmp_path))  # the directory layout of ../shared/data/code
    assert problems == load_task("humaneval", "test", path=str(tmp_path / "humaneval.jsonl.gz"))
    first = problems[0]
    assert isinstance(first, CodeProblem) and first.entry_point == "double" and first.prefix == HUMANEVAL_ROWS[0]["prompt"]
    assert first.meta["task_id"] == "Toy/0" and first.answer == ""
    assert HUMANEVAL_ROWS[0]["prompt"].rstrip() in first.question and "return x * 2" not in first.question
    # the reference (prompt + body) passes; a completion of just the body passes too (the prompt is the prefix);
    # a wrong one fails; a completion without imports may use the prefix's `math`
    body = "```python\n    return x * 2\n```"
    wrong = "```python\ndef double(x):\n    return x + 2\n```"
    sqrt = "```python\ndef root(x):\n    return math.sqrt(x)\n```"
    assert _passes(scorer, [first.solution, body, wrong, sqrt], [first, first, first, problems[1]]) == [
        "passed", "passed", "failed", "passed"]  # fmt: skip


def test_leetcode_splits_difficulties_and_solutions_kept_out_of_prompts(tmp_path, scorer):
    _write(tmp_path / "leetcode-train.jsonl.gz", LEETCODE_ROWS)
    _write(tmp_path / "test.jsonl", LEETCODE_ROWS[:1])
    train = load_task("leetcode", "train", path=str(tmp_path))
    assert [p.meta["task_id"] for p in train] == ["toy-sum", "toy-count"]
    assert [p.meta["difficulty"] for p in train] == ["Easy", "Medium"]  # meta.difficulty (GitHub) or difficulty (hub)
    assert [p.meta["task_id"] for p in load_task("leetcode", "test", path=str(tmp_path))] == ["toy-sum"]
    kept = load_task("leetcode", "train", path=str(tmp_path), difficulties=["Medium", "Hard"])
    assert [p.meta["task_id"] for p in kept] == ["toy-count"]
    for p in train:
        prompt = problem_prompt(p, template="plain")
        assert p.question in prompt and CODE_INSTRUCTION in prompt
        assert "return a + b" not in prompt and "len(Counter" not in prompt
    assert _passes(scorer, [p.solution for p in train], train) == ["passed", "passed"]
    assert _passes(scorer, [train[1].solution], [train[0]]) == ["failed"]  # the other problem's program


def test_loader_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"humaneval: unknown split 'train'; valid splits: test"):
        load_task("humaneval", "train", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"leetcode-train\.jsonl"):
        load_task("leetcode", "train", path=str(tmp_path))
    _write(tmp_path / "bad.jsonl", [{"task_id": "x", "prompt": "", "entry_point": "f"}])
    with pytest.raises(ValueError, match="record 0 is missing field 'test'"):
        load_task("humaneval", "test", path=str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match="difficulties: must be some of Easy, Medium, Hard"):
        load_task("leetcode", "train", path=str(tmp_path), difficulties="Trivial")


def test_task_kinds_options_and_prompts():
    assert [is_code_task(n) for n in ("synthetic", "gsm8k", "humaneval", "leetcode", "synthetic_code")] == [
        False, False, True, True, True]  # fmt: skip
    assert task_options("humaneval") == ("shuffle",)
    assert task_options("leetcode") == ("shuffle", "difficulties")
    assert task_options("synthetic_code") == ("families", "num_examples", "num_hidden", "test_fraction")
    for name, options, message in [
        ("synthetic_code", {"num_examples": 0}, "num_examples: must be an int >= 1, got 0"),
        ("synthetic_code", {"families": "int,float"}, "families: must be a comma-separated list of int, str"),
        ("synthetic_code", {"num_examples": 6, "num_hidden": 5}, "num_examples \\+ num_hidden: must be <= 10"),
        ("synthetic_code", {"test_fraction": 1.0}, r"test_fraction: must be in \(0, 1\)"),
        ("leetcode", {"difficulties": ["easy"]}, "difficulties: must be some of"),
        ("humaneval", {"shuffle": "yes"}, "shuffle: must be true or false"),
        ("humaneval", {"difficulties": "Easy"}, "difficulties: unknown option of task 'humaneval'; valid: shuffle"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_task_options(name, options)
    math = load_task("synthetic", "test", limit=1)[0]
    assert problem_prompt(math, template="plain").endswith(f"{DEFAULT_INSTRUCTION}\nAnswer:")
    code = load_task("synthetic_code", "test", limit=1)[0]
    assert problem_prompt(code, template="raw") == code.question + "\n"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared coding data not found at {SHARED}")
def test_shared_copies_load_with_their_counts():
    assert len(load_task("humaneval", "test", path=str(SHARED))) == 164
    assert len(load_task("leetcode", "test", path=str(SHARED))) == 200
    train = load_task("leetcode", "train", path=str(SHARED))
    assert len(train) == 1890 and {p.meta["difficulty"] for p in train} == {"Easy", "Medium", "Hard"}
    references = [p.solution.removeprefix("```python\n").removesuffix("\n```") for p in train]
    assert all(ref and ref not in p.question for ref, p in zip(references, train))


# ----------------------------------------------------------------------------- the synthetic coding task
def test_synthetic_code_is_seeded_and_its_stream_unlimited():
    config = SyntheticCodeConfig(seed=3)
    assert generate("train", 200, config) == generate("train", 200, config)
    assert generate("train", 200, config) != generate("train", 200, SyntheticCodeConfig(seed=4))
    assert generate("train", 1000, config)[:50] == generate("train", 50, config)
    assert load_task("synthetic_code", "test", limit=20, seed=3) == generate("test", 20, config)


@pytest.mark.parametrize("families", ["int", "str", "int,str"])
def test_synthetic_code_train_and_test_never_share_a_problem(families):
    def keys(split, n):
        return {p.meta["key"] for seed in range(3) for p in generate(split, n, SyntheticCodeConfig(seed=seed, families=families))}

    train, test = keys("train", 1000), keys("test", 300)
    assert train and test and not train & test
    assert {k.split("|")[0] for k in test} & {k.split("|")[0] for k in train}  # functions recur, problems never


def test_synthetic_code_examples_determine_the_function():
    """No other function of the family agrees with every shown example and differs on a hidden call."""
    for p in generate("train", 300, SyntheticCodeConfig(seed=5)):
        functions = [fn for group in family(p.meta["family"]) for _, fn in group]
        fn = next(f for group in family(p.meta["family"]) for e, f in group if e == p.meta["expression"])
        calls = [ast.literal_eval(line.split("candidate(", 1)[1].split(") ==")[0]) for line in p.tests.splitlines()[1:]]
        shown, hidden = calls[:3], calls[3:]
        assert len(hidden) == 3 and len(set(map(repr, calls))) == 6
        for other in functions:
            if [other(x) for x in shown] == [fn(x) for x in shown]:
                assert [other(x) for x in hidden] == [fn(x) for x in hidden], (p.meta, other)


def test_synthetic_code_solutions_pass_and_memorised_examples_fail(scorer):
    problems = generate("test", 40, SyntheticCodeConfig(seed=2))
    assert _passes(scorer, [p.solution for p in problems], problems) == ["passed"] * 40
    # a lookup table of the shown examples is right on every shown call and fails the hidden ones
    tables = []
    for p in problems:
        pairs = [line.split("=", 1) for line in p.question.splitlines()]
        table = ", ".join(f"{call[2:-1]}: {value}" for call, value in pairs)
        tables.append(f"def f(x): return {{{table}}}[x]")
    assert set(_passes(scorer, tables, problems)) == {"failed"}
    # texts are short printable ASCII, within the tiny model's reach
    for p in problems:
        assert len(p.question) <= 80 and len(p.solution) <= 40
        assert all(c == "\n" or (c.isascii() and c.isprintable()) for c in p.question + p.solution)
