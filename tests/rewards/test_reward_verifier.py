"""The symbolic verifier: input guard, hard timeout with kill-and-respawn, parallel use."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sspo.rewards import SymbolicVerifier, is_safe_expression


@pytest.mark.parametrize(
    "text", ["\\frac{1}{2}", "x^2+1", "2^{10}", "(0, 1]", "5!", "n!", "\\sqrt{2}", "e^{i\\pi}", "10^{-3}"]
)
def test_guard_accepts_ordinary_answers(text):
    assert is_safe_expression(text)


@pytest.mark.parametrize(
    "text",
    [
        "9^{9^{9^{9}}}",
        "9^9^9",
        "2**2**30",
        "2^{123456}",
        "100000!",
        "(5)!",
        "{" * 30 + "1" + "}" * 30,
        "x" * 501,
        "1\x00",
        "\ud800",
        "",
    ],
)
def test_guard_refuses_dangerous_answers(text):
    assert not is_safe_expression(text)


def test_timeout_kills_the_worker_and_a_fresh_one_answers_next(verifier):
    start = time.monotonic()
    status = verifier.compare("5", "9^{9^{9^{9}}}", timeout=0.5, guard=False)
    elapsed = time.monotonic() - start
    assert status == "timeout"
    assert elapsed < 1.5
    assert verifier.compare("\\sqrt{4}", "2", timeout=30) == "correct"


def test_guarded_compare_refuses_without_reaching_a_worker(verifier):
    start = time.monotonic()
    assert verifier.compare("5", "9^{9^{9^{9}}}", timeout=30) == "parse_fail"
    assert time.monotonic() - start < 0.1


def test_parallel_compares_from_many_threads(verifier):
    pairs = [("\\frac{1}{2}", "0.5"), ("\\sqrt{2}", "\\sqrt{3}"), ("(0,1)", "(0, 1)"), ("x+1", "1+x")] * 3
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda p: verifier.compare(*p, timeout=10), pairs))
    assert statuses == ["correct", "wrong", "correct", "correct"] * 3


def test_unparseable_prediction_is_a_parse_failure(verifier):
    assert verifier.compare("\\sqrt{2}", "}{", timeout=10) == "parse_fail"


def test_closed_verifier_refuses_work():
    verifier = SymbolicVerifier(workers=1)
    verifier.close()
    with pytest.raises(RuntimeError, match="closed"):
        verifier.compare("1", "1")
    with pytest.raises(ValueError, match="workers"):
        SymbolicVerifier(workers=0)


def test_a_raising_math_verify_is_a_verifier_error_not_a_parse_failure(tmp_path, monkeypatch):
    """A math-verify whose ``verify`` raises must not score LaTeX answers as unparseable, silently."""
    from sspo.rewards import RewardScorer

    fake = tmp_path / "math_verify"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "class LatexExtractionConfig:\n    def __init__(self, **kw): pass\n"
        "class ExprExtractionConfig:\n    def __init__(self, **kw): pass\n"
        "def parse(text, **kw): return [text]\n"
        "def verify(gold, pred, **kw): raise TypeError('broken verifier')\n"
    )  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker subprocess imports the fake first
    with RewardScorer(timeout=10.0, verifier=SymbolicVerifier(workers=1)) as scorer:
        rewards, metrics = scorer.score_batch(["\\boxed{\\frac{1}{2}}", "#### 3", "no answer"], ["\\frac12", "3", "3"])
        assert rewards == [0.0, 1.0, 0.0]
        assert metrics["reward/error_frac"] == 1 / 3 and metrics["reward/parse_fail_frac"] == 1 / 3
        assert scorer.grade("\\boxed{x}", "x").status == "error"
        assert scorer.last_error == "TypeError: broken verifier"
        scorer.verifier.close()
