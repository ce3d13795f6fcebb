"""math_reward, batched scoring and metrics: GSM8K acceptance, LaTeX answers, hostile completions."""

import json
import random
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from sspo.rewards import METRIC_KEYS, RewardScorer, grade, math_reward, score_batch

GSM8K_TEST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"


def _gsm8k_test():
    if not GSM8K_TEST.is_file():
        pytest.skip(f"{GSM8K_TEST} is absent")
    rows = [json.loads(line) for line in GSM8K_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
    golds = [row["answer"].rsplit("####", 1)[1].strip().replace(",", "") for row in rows]
    return [row["answer"] for row in rows], golds


def test_every_gsm8k_test_solution_scores_one_against_its_gold():
    solutions, golds = _gsm8k_test()
    assert len(solutions) == 1319
    rewards, metrics = score_batch(solutions, golds)
    assert rewards == [1.0] * len(solutions)
    assert metrics["reward/mean"] == 1.0 and metrics["reward/parse_fail_frac"] == 0.0


def test_shuffled_gsm8k_golds_only_score_true_coincidences():
    solutions, golds = _gsm8k_test()
    shuffled = golds[:]
    random.Random(0).shuffle(shuffled)
    expected = [float(Fraction(a) == Fraction(b)) for a, b in zip(golds, shuffled)]
    rewards, metrics = score_batch(solutions, shuffled)
    assert rewards == expected
    assert 0 < sum(expected) < 0.05 * len(golds)  # some coincidences exist, and only a few
    assert metrics["reward/wrong_frac"] == pytest.approx(1 - sum(expected) / len(golds))


@pytest.mark.parametrize(
    ("completion", "reference", "reward"),
    [
        ("3+4=7. 7-2=5. #### 5", "5", 1.0),
        ("3+4=7. 7-2=5. #### 6", "5", 0.0),
        ("She makes $18 every day.\n#### $18.", "18", 1.0),
        ("The answer is 1,234 apples.", "1234", 1.0),
        ("so \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("so \\boxed{\\frac{2}{4}}", "0.5", 1.0),
        ("so \\boxed{50\\%}", "50", 1.0),
        ("no answer here", "5", 0.0),
    ],
)
def test_plain_answers(completion, reference, reward):
    assert math_reward(completion, reference) == reward


@pytest.mark.parametrize(
    ("answer", "reference", "reward"),
    [
        ("\\sqrt{2}", "2^{1/2}", 1.0),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", 1.0),
        ("\\sqrt{3}", "\\sqrt{2}", 0.0),
        ("(0, 1]", "(0,1]", 1.0),
        ("[0, 1]", "(0,1]", 0.0),
        ("x^2 + 2x + 1", "(x+1)^2", 1.0),
        ("\\frac{\\pi}{2}", "\\pi/2", 1.0),
        ("\\dfrac{\\pi}{3}", "\\pi/2", 0.0),
        ("2^{10}", "1024", 1.0),
        ("2\\sqrt{2}", "\\sqrt{8}", 1.0),
    ],
)
def test_latex_answers_use_math_verify(scorer, answer, reference, reward):
    result = scorer.grade(f"Therefore the result is \\boxed{{{answer}}}.", reference)
    assert result.reward == reward
    assert result.status == ("correct" if reward else "wrong")


HOSTILE = {
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "huge factorial": "\\boxed{100000!}",
    "unbalanced braces": "\\boxed{" + "{" * 20_000,
    "bare braces": "{" * 20_000,
    "deep frac": "\\boxed{" + "\\frac{" * 3000 + "1" + "}{2}" * 3000 + "}",
    "5 MB of digits": "7" * 5_000_000,
    "NUL bytes": "\x00" * 10_000,
    "boxed NUL": "\\boxed{\x00}",
    "lone surrogates": "\ud800\udfff" * 1000,
    "boxed surrogate": "\\boxed{\udc80}",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_score_zero_within_the_bound(scorer, name):
    start = time.monotonic()
    result = scorer.grade(HOSTILE[name], "7")
    elapsed = time.monotonic() - start
    assert result.reward == 0.0
    assert result.status in ("parse_fail", "wrong", "timeout")
    assert elapsed < scorer.timeout + 0.5, f"{name} took {elapsed:.2f} s"


def test_hostile_batch_from_a_worker_thread():
    results = {}

    def run():
        results["out"] = score_batch(list(HOSTILE.values()), ["7"] * len(HOSTILE), timeout=1.0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    rewards, metrics = results["out"]
    assert rewards == [0.0] * len(HOSTILE)
    assert set(metrics) == set(METRIC_KEYS)
    assert (
        metrics["reward/parse_fail_frac"] + metrics["reward/wrong_frac"] + metrics["reward/timeout_frac"]
        == 1.0
    )


def test_batch_preserves_order_and_counts_outcomes(scorer):
    completions = [
        "\\boxed{\\sqrt{2}}",  # symbolic, correct
        "#### 4",  # plain, wrong
        "nothing",  # parse failure
        "\\boxed{(1, 2)}",  # symbolic, correct
        "#### 3",  # plain, correct
        "\\boxed{\\sqrt{5}}",  # symbolic, wrong
    ]
    references = ["\\sqrt{2}", "3", "3", "(1,2)", "3", "\\sqrt{2}"]
    rewards, metrics = scorer.score_batch(completions, references)
    assert rewards == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert metrics == {
        "reward/mean": 0.5,
        "reward/parse_fail_frac": pytest.approx(1 / 6),
        "reward/wrong_frac": pytest.approx(2 / 6),
        "reward/timeout_frac": 0.0,
        "reward/error_frac": 0.0,
    }


def test_empty_batch_and_mismatched_lengths(scorer):
    assert scorer.score_batch([], []) == ([], dict.fromkeys(METRIC_KEYS, 0.0))
    with pytest.raises(ValueError, match="differ in length"):
        scorer.score_batch(["#### 1"], [])


def test_grade_reports_the_extracted_answer():
    result = grade("First 3. The answer is 12 apples.", "12")
    assert (result.reward, result.status, result.answer) == (1.0, "correct", "12 apples")


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        RewardScorer(timeout=0)
    with pytest.raises(TypeError, match="reference"):
        math_reward("#### 1", 1)
