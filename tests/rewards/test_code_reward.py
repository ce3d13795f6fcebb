"""code_reward and CodeScorer: verdicts, partial credit, statuses, argument errors, threads, clean-up.

The problems are the in-repo fixtures of ``code_problems.py`` (HumanEval and LeetCode styles, with
``ListNode``/``TreeNode``); hostile programs are in ``test_code_hostile.py``.
"""

import math
import os
import threading
import time
import warnings
from dataclasses import dataclass

import pytest
from code_problems import ALL, HUMANEVAL_STYLE, LEETCODE_STYLE, as_problem

from sspo.rewards import CODE_METRIC_KEYS, CODE_STATUSES, CodeScorer, code_metrics, code_reward
from sspo.rewards.code import scorer as scorer_module

ADD = {"tests": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n", "entry_point": "add"}


@pytest.fixture(scope="module")
def scorer():
    with CodeScorer(workers=2, timeout=2.0) as scorer:
        scorer.warmup()
        yield scorer


def test_code_reward_one_and_zero():
    assert code_reward("```python\ndef add(a, b):\n    return a + b\n```", **ADD) == 1.0
    assert code_reward("def add(a, b):\n    return a - b\n", **ADD) == 0.0
    assert code_reward("Sure!\n```python\ndef add(a, b):\n    return a * b\n```\n", **ADD) == 0.0


@pytest.mark.parametrize("problem", ALL, ids=lambda p: p.name)
def test_fixture_solutions_pass_and_wrong_ones_fail(scorer, problem):
    assert scorer.score(problem.solution, as_problem(problem)) == 1.0
    assert scorer.score(f"```python\n{problem.wrong}```", as_problem(problem)) == 0.0


def test_batch_keeps_order_and_every_style(scorer):
    completions = [p.solution for p in ALL] + [p.wrong for p in ALL]
    problems = [as_problem(p) for p in ALL] * 2
    grades = scorer.grade_batch(completions, problems)
    assert [g.status for g in grades] == ["passed"] * len(ALL) + ["failed"] * len(ALL)
    assert scorer.score_batch(completions, problems) == [1.0] * len(ALL) + [0.0] * len(ALL)
    assert len(HUMANEVAL_STYLE) >= 4 and len(LEETCODE_STYLE) >= 4


def test_partial_credit_is_the_fraction_of_assertions(scorer):
    tests = "def check(candidate):\n" + "".join(f"    assert candidate({i}) == {i * i}\n" for i in range(4))
    problem = {"tests": tests, "entry_point": "sq"}
    half = "def sq(x):\n    return x * x if x < 2 else 0\n"
    assert scorer.score(half, problem) == 0.0
    grade = scorer.grade(half, problem, partial=True)
    assert grade.score == pytest.approx(0.5) and grade.status == "failed" and "2 of 4" in grade.detail
    full = scorer.grade("def sq(x):\n    return x * x\n", problem, partial=True)
    assert (full.score, full.status) == (1.0, "passed")
    # A loop counts every evaluation; a candidate that raises fails that assertion only.
    looped = {"tests": "def check(candidate):\n    for i in range(10):\n        assert candidate(i) == i\n", "entry_point": "f"}
    raising = "def f(x):\n    if x % 5 == 4:\n        raise ValueError('no')\n    return x\n"
    assert scorer.grade(raising, looped, partial=True).score == pytest.approx(0.8)
    # A program that dies after two answers: the rest of the assertions count as failed.
    dying = "import os\nn = []\ndef sq(x):\n    n.append(x)\n    if len(n) > 2:\n        os._exit(0)\n    return x * x\n"
    grade = scorer.grade(dying, problem, partial=True)
    assert grade.status == "crashed" and grade.score == pytest.approx(0.5)


def test_statuses_and_details(scorer):
    problems = [ADD] * 5
    completions = [
        "def add(a, b):\n    return a + b\n",
        "def add(a, b):\n    return 0\n",
        "def add(a, b)\n    return a + b\n",
        "def add(a, b):\n    while True:\n        pass\n",
        "import ctypes\ndef add(a, b):\n    return ctypes.string_at(0)\n",
    ]
    grades = scorer.grade_batch(completions, problems, timeout=1.0)
    assert [g.status for g in grades] == ["passed", "failed", "syntax_error", "timeout", "crashed"]
    assert [g.score for g in grades] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert "tests line 2" in grades[1].detail  # the first assertion of ADD
    assert "SyntaxError" in grades[2].detail
    assert 1.0 <= grades[3].seconds < 3.0
    assert "SIGSEGV" in grades[4].detail
    metrics = code_metrics(grades)
    assert set(metrics) == set(CODE_METRIC_KEYS) and CodeScorer.metrics is code_metrics
    assert metrics["reward/mean"] == pytest.approx(0.2)
    assert all(metrics[f"reward/{s}_frac"] == pytest.approx(0.2) for s in CODE_STATUSES if s != "sandbox_error")
    assert metrics["reward/sandbox_error_frac"] == 0.0


def test_missing_entry_point_and_import_errors_fail(scorer):
    assert scorer.grade("def plus(a, b):\n    return a + b\n", ADD).status == "failed"
    assert scorer.grade("import no_such_module_xyz\n", ADD).status == "failed"
    assert scorer.grade("add = 5\n", ADD).status == "failed"


def test_exceptions_come_back_as_builtin_types(scorer):
    tests = (
        "def check(candidate):\n"
        "    try:\n"
        "        candidate(-1)\n"
        "    except ValueError as exc:\n"
        "        assert 'negative' in str(exc)\n"
        "    else:\n"
        "        assert False\n"
        "    assert candidate(4) == 2.0\n"
    )
    problem = {"tests": tests, "entry_point": "root"}
    good = "def root(x):\n    if x < 0:\n        raise ValueError('negative input')\n    return x ** 0.5\n"
    assert scorer.score(good, problem) == 1.0
    custom = "class Oops(ValueError):\n    pass\ndef root(x):\n    if x < 0:\n        raise Oops('negative')\n    return x ** 0.5\n"
    assert scorer.score(custom, problem) == 0.0  # a program class is never rebuilt on the judge side
    assert scorer.score("def root(x):\n    return abs(x) ** 0.5\n", problem) == 0.0


def test_values_keep_their_types(scorer):
    problem = {"tests": "def check(candidate):\n    assert candidate() == [1, 2]\n", "entry_point": "f"}
    assert scorer.score("def f():\n    return [1, 2]\n", problem) == 1.0
    assert scorer.score("def f():\n    return (1, 2)\n", problem) == 0.0  # as in-process: (1, 2) != [1, 2]
    numpy_out = "import numpy as np\ndef f():\n    return np.array([1, 2])\n"
    assert scorer.score(numpy_out, problem) == 1.0  # numpy values become plain lists and numbers


def test_problem_objects_and_prefix(scorer):
    @dataclass
    class Task:
        tests: str
        entry_point: str
        prefix: str | None = None

    assert scorer.score("def add(a, b):\n    return a + b\n", Task(ADD["tests"], "add")) == 1.0
    task = Task(ADD["tests"], "add", "def add(a, b):\n")
    assert scorer.score("    return a + b\n", task) == 1.0


def test_tests_faults_are_sandbox_errors_not_program_failures(scorer):
    unsupported = {"tests": "def check(candidate):\n    assert candidate(lambda x: x) == 1\n", "entry_point": "f"}
    grade = scorer.grade("def f(g):\n    return 1\n", unsupported)
    assert grade.status == "sandbox_error" and "cannot cross" in grade.detail and grade.score == 0.0
    never = {"tests": "def check(candidate):\n    assert True\n", "entry_point": "f"}
    assert scorer.grade("def f():\n    return 1\n", never).status == "sandbox_error"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tests": "def check(candidate):\n    assert (\n"}, "tests do not compile"),
        ({"tests": "def verify(candidate):\n    pass\n"}, "check"),
        ({"entry_point": "a + b"}, "entry_point"),
        ({"entry_point": "f(1)"}, "entry_point"),
        ({"entry_point": "__import__('os').system"}, "entry_point"),
        ({"entry_point": ""}, "entry_point"),
        ({"prefix": 3}, "prefix"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"memory_mb": 32}, "memory_mb"),
        ({"memory_mb": 512.0}, "memory_mb"),
        ({"memory_mb": 100}, "memory_mb"),  # below what the sandboxed interpreter itself maps
        ({"partial": 1}, "partial"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, match):
    args = {**ADD, **kwargs}
    with pytest.raises(ValueError, match=match):
        code_reward("def add(a, b):\n    return a + b\n", **args)


def test_bad_batches_and_problems_are_value_errors(scorer):
    with pytest.raises(ValueError, match="length"):
        scorer.grade_batch(["x"], [])
    with pytest.raises(ValueError, match="entry_point"):
        scorer.grade("x", {"tests": ADD["tests"]})
    with pytest.raises(ValueError, match="str"):
        scorer.grade(None, ADD)
    with pytest.raises(ValueError, match="workers"):
        CodeScorer(workers=0)
    with pytest.raises(ValueError, match="isolation"):
        CodeScorer(isolation="none")


def test_oversized_programs_are_not_run(scorer):
    big = "def add(a, b):\n    return a + b\n" + "#" * (scorer.max_program_bytes + 1)
    grade = scorer.grade(big, ADD)
    assert grade.status == "failed" and grade.score == 0.0 and "larger" in grade.detail


def test_usable_from_many_threads(scorer):
    results: dict[int, float] = {}

    def work(i: int) -> None:
        body = "a + b" if i % 2 else "a - b"
        results[i] = scorer.score(f"def add(a, b):\n    return {body}\n", ADD)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: float(i % 2) for i in range(8)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                kids = []
            found += kids
            todo += kids
    return found


def test_close_leaves_no_process_behind():
    scorer = CodeScorer(workers=2)
    scorer.warmup()
    assert scorer.score("def add(a, b):\n    return a + b\n", ADD) == 1.0
    pids = [judge.process.pid for judge in scorer._judges]
    tree = [p for pid in pids for p in [pid, *_descendants(pid)]]
    assert len(tree) >= 4  # judges and their sandboxes
    scorer.close()
    scorer.close()  # idempotent
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in tree if _alive(p)]
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score("x", ADD)


def test_degraded_isolation_warns_once_naming_what_is_missing(monkeypatch):
    monkeypatch.setattr(scorer_module, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with CodeScorer(workers=1, isolation="process") as degraded:
                assert degraded.score("def add(a, b):\n    return a + b\n", ADD) == 1.0
                assert degraded.score("def add(a, b):\n    return 0\n", ADD) == 0.0
    ours = [w for w in caught if "code sandbox" in str(w.message)]
    assert len(ours) == 1
    assert "namespaces" in str(ours[0].message) and "isolation='process'" in str(ours[0].message)
    assert degraded.layers["pid_namespace"] is False and degraded.missing_layers


def test_every_layer_is_on_where_the_machine_allows_it(scorer):
    if scorer.layers.get("mode") not in ("ns", "userns"):
        pytest.skip(f"this machine cannot create namespaces: {scorer.missing_layers}")
    assert scorer.missing_layers == [] or scorer.layers["mode"] == "userns"
    for layer in ("pid_namespace", "network_namespace", "private_filesystem", "capabilities_dropped"):
        assert scorer.layers[layer], layer
    if scorer.layers["mode"] == "ns":
        assert scorer.layers["unprivileged_uid"]


def test_values_the_check_loops_on_or_multiplies_cannot_hang_or_exhaust_the_judge(scorer):
    loop = {"tests": "def check(candidate):\n    for _ in range(candidate()):\n        pass\n", "entry_point": "n"}
    started = time.monotonic()
    grade = scorer.grade("def n():\n    return 10**15\n", loop, timeout=1.0)
    assert grade.status == "timeout" and time.monotonic() - started < 5.0
    grow = {"tests": "def check(candidate):\n    assert len([0] * candidate()) == 3\n", "entry_point": "n"}
    assert scorer.grade("def n():\n    return 10**12\n", grow).status == "failed"  # MemoryError in the judge
    assert scorer.score("def n():\n    return 3\n", grow) == 1.0  # and the judge is fine


@pytest.mark.parametrize(
    "completion",
    ["", "\x00", "def add(a, b):\n    return a + b\x00", "\ud800", "```python\n```", "```", "x" * 100_000, "\n" * 10_000],
)
def test_odd_completions_score_zero_without_raising(scorer, completion):
    grade = scorer.grade(completion, ADD)
    assert grade.score == 0.0 and grade.status in ("failed", "syntax_error"), grade
