"""Math reward: extract the final answer, compare it with the reference, report outcome metrics.

``math_reward(completion, reference) = 1.0`` when the final answer (see :mod:`.extract`) equals the
reference, else ``0.0``. Plain numbers on both sides compare exactly in the calling thread
(:mod:`.numbers`); everything else goes to math-verify in a killable worker process
(:mod:`.symbolic`), so the time spent is bounded in any thread. Outcomes:

* ``correct``    — reward 1.0;
* ``wrong``      — an answer was found and it differs from the reference;
* ``parse_fail`` — no final answer, or one that cannot be parsed (or is refused as unsafe);
* ``timeout``    — the symbolic comparison overran ``timeout`` seconds (its worker was killed);
* ``error``      — math-verify raised or its worker died: a fault of the verifier, not of the answer.
  It is kept apart from ``parse_fail`` so that a broken verifier cannot pass for unparseable answers
  (``reward/error_frac``; the trainer warns on the first and stops when too many errored).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sspo.rewards.extract import extract_final_answer
from sspo.rewards.numbers import parse_number
from sspo.rewards.symbolic import STATUSES, SymbolicVerifier

METRIC_KEYS = ("reward/mean", "reward/parse_fail_frac", "reward/wrong_frac", "reward/timeout_frac", "reward/error_frac")


@dataclass(frozen=True)
class Grade:
    """The outcome of scoring one completion."""

    reward: float
    """1.0 if correct, else 0.0."""
    status: str
    """One of ``correct``, ``wrong``, ``parse_fail``, ``timeout``, ``error``."""
    answer: str | None
    """The extracted final answer (``None`` when none was found)."""


_PENDING = "pending"


def _fast_grade(completion: str, reference: str) -> Grade:
    """Grade without leaving the thread; status ``pending`` means "needs math-verify"."""
    if not isinstance(completion, str):
        return Grade(0.0, "parse_fail", None)
    answer = extract_final_answer(completion)
    if answer is None:
        return Grade(0.0, "parse_fail", None)
    gold, pred = parse_number(reference), parse_number(answer)
    if gold is not None and pred is not None:
        return Grade(1.0, "correct", answer) if gold == pred else Grade(0.0, "wrong", answer)
    return Grade(0.0, _PENDING, answer)


def _finish(grade: Grade, reference: str, verifier: SymbolicVerifier, timeout: float) -> Grade:
    if grade.status != _PENDING:
        return grade
    status = verifier.compare(_strip(reference), _strip(grade.answer), timeout=timeout)
    return Grade(1.0 if status == "correct" else 0.0, status, grade.answer)


def _strip(text: str) -> str:
    """Drop outer math delimiters and a trailing period before the symbolic comparison."""
    s = text.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
    return s.rstrip(".").strip()


def _check_reference(reference: str) -> str:
    if not isinstance(reference, str):
        raise TypeError(f"reference must be a str, got {type(reference).__name__}")
    return reference


class RewardScorer:
    """Scores completions against references with its own pool of math-verify workers.

    ``timeout`` bounds each symbolic comparison; ``workers`` is the number of worker processes
    (and of comparisons run in parallel). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, *, timeout: float = 1.0, workers: int = 2, verifier: SymbolicVerifier | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self._owns_verifier = verifier is None
        self.verifier = verifier if verifier is not None else SymbolicVerifier(workers)
        self.workers = self.verifier.workers

    def grade(self, completion: str, reference: str) -> Grade:
        """Grade one completion."""
        grade = _fast_grade(completion, _check_reference(reference))
        return _finish(grade, reference, self.verifier, self.timeout)

    def score(self, completion: str, reference: str) -> float:
        """Reward of one completion (1.0 or 0.0)."""
        return self.grade(completion, reference).reward

    def grade_batch(self, completions: Sequence[str], references: Sequence[str]) -> list[Grade]:
        """Grade a batch, in order. Plain numbers are graded inline; the rest in parallel workers."""
        if len(completions) != len(references):
            raise ValueError(
                f"completions and references differ in length: {len(completions)} != {len(references)}"
            )
        grades = [_fast_grade(c, _check_reference(r)) for c, r in zip(completions, references)]
        pending = [i for i, g in enumerate(grades) if g.status == _PENDING]
        if len(pending) == 1:
            i = pending[0]
            grades[i] = _finish(grades[i], references[i], self.verifier, self.timeout)
        elif pending:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(pending))) as pool:
                done = pool.map(
                    lambda i: _finish(grades[i], references[i], self.verifier, self.timeout), pending
                )
                for i, grade in zip(pending, done):
                    grades[i] = grade
        return grades

    def score_batch(
        self, completions: Sequence[str], references: Sequence[str]
    ) -> tuple[list[float], dict[str, float]]:
        """Rewards for a batch, in order, and the outcome metrics (see :func:`grade_metrics`)."""
        grades = self.grade_batch(completions, references)
        return [g.reward for g in grades], grade_metrics(grades)

    @property
    def last_error(self) -> str | None:
        """The message of the latest ``error`` outcome (``None``: none so far)."""
        return self.verifier.last_error

    def warmup(self) -> None:
        """Start the worker processes now instead of at the first symbolic comparison."""
        self.verifier.warmup()

    def close(self) -> None:
        if self._owns_verifier:
            self.verifier.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grade_metrics(grades: Sequence[Grade]) -> dict[str, float]:
    """``reward/mean`` and the fraction of each failure kind (0.0 for an empty batch)."""
    n = len(grades)
    counts = dict.fromkeys(STATUSES, 0)
    for grade in grades:
        counts[grade.status] += 1
    return {
        "reward/mean": sum(g.reward for g in grades) / n if n else 0.0,
        "reward/parse_fail_frac": counts["parse_fail"] / n if n else 0.0,
        "reward/wrong_frac": counts["wrong"] / n if n else 0.0,
        "reward/timeout_frac": counts["timeout"] / n if n else 0.0,
        "reward/error_frac": counts["error"] / n if n else 0.0,
    }


_DEFAULT_LOCK = threading.Lock()
_DEFAULT_VERIFIERS: dict[int, SymbolicVerifier] = {}


def default_verifier(workers: int = 2) -> SymbolicVerifier:
    """The process-wide verifier with ``workers`` processes, created on first use (a resource cache;
    its processes stop at interpreter exit)."""
    with _DEFAULT_LOCK:
        verifier = _DEFAULT_VERIFIERS.get(workers)
        if verifier is None:
            verifier = _DEFAULT_VERIFIERS[workers] = SymbolicVerifier(workers)
        return verifier


def math_reward(completion: str, reference: str, *, timeout: float = 1.0) -> float:
    """1.0 when the final answer of ``completion`` equals ``reference``, else 0.0. Never raises on
    hostile completions; symbolic comparisons are bounded by ``timeout`` seconds."""
    return grade(completion, reference, timeout=timeout).reward


def grade(completion: str, reference: str, *, timeout: float = 1.0) -> Grade:
    """Like :func:`math_reward` but returns the full :class:`Grade`."""
    return RewardScorer(timeout=timeout, verifier=default_verifier()).grade(completion, reference)


def score_batch(
    completions: Sequence[str], references: Sequence[str], *, timeout: float = 1.0, workers: int = 2
) -> tuple[list[float], dict[str, float]]:
    """Rewards for a whole rollout batch (order preserved) and metrics with keys :data:`METRIC_KEYS`."""
    scorer = RewardScorer(timeout=timeout, verifier=default_verifier(workers))
    return scorer.score_batch(completions, references)
