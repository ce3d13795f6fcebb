"""The task's reward, behind one interface: the trainer, evaluation and the demo never ask which kind.

A :class:`TaskReward` scores completions against the problems they answer:

* :meth:`~TaskReward.score_batch` — the **training** reward and its metrics (the one RL optimises:
  possibly shaped, e.g. the work check of ``task.reward=answer_and_work`` or partial credit for
  assertions passed with ``task.reward=partial``);
* :meth:`~TaskReward.success_batch` — **evaluation**'s strict 0/1: the final answer is right, or
  the program passes every test (greedy accuracy / pass rate and pass@k);
* ``reward/error_frac`` in the metrics — the share of rewards that are the *scorer's* fault, never
  the model's (math-verify raised or died; the code sandbox failed), with :attr:`last_error` and
  :attr:`error_hint` for the trainer's warning and stop (``rollout.max_reward_error_frac``).

:func:`task_reward` picks the implementation from the task: :class:`MathReward` (final answers,
:class:`sspo.rewards.RewardScorer`) or :class:`CodeReward` (tests run in the sandbox,
:class:`sspo.rewards.CodeScorer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..rewards import CodeScorer, RewardScorer, code_metrics
from ..rewards.code import program_text
from ..rewards.work import work_is_consistent
from ..tasks import Problem, is_code_task
from .config import TrainConfig


class TaskReward(Protocol):
    """What the trainer needs from a task's reward (see the module docstring)."""

    error_hint: str
    """What to fix when ``reward/error_frac`` is too high (ends the trainer's error message)."""

    @property
    def last_error(self) -> str | None: ...

    def score_batch(self, completions: Sequence[str], problems: Sequence[Problem]) -> tuple[list[float], dict[str, float]]: ...

    def success_batch(self, completions: Sequence[str], problems: Sequence[Problem]) -> list[float]: ...

    def close(self) -> None: ...


class MathReward:
    """Final answers compared with the gold answer (:class:`sspo.rewards.RewardScorer`); with
    ``check_work`` a right answer earns its training reward only if its shown work is consistent
    (:func:`sspo.rewards.work.work_is_consistent`)."""

    error_hint = "fix the verifier (math-verify)"

    def __init__(self, *, timeout: float = 1.0, check_work: bool = False):
        self.scorer = RewardScorer(timeout=timeout)
        self.check_work = check_work

    @property
    def last_error(self) -> str | None:
        return self.scorer.last_error

    def score_batch(self, completions, problems) -> tuple[list[float], dict[str, float]]:
        rewards, metrics = self.scorer.score_batch(completions, [p.answer for p in problems])
        if not self.check_work:
            return rewards, metrics
        consistent = [work_is_consistent(c) for c in completions]
        checked = [r if ok else 0.0 for r, ok in zip(rewards, consistent)]
        n = max(1, len(rewards))
        metrics.update({
            "reward/mean": sum(checked) / n,
            "reward/answer_mean": sum(rewards) / n,
            "reward/bad_work_frac": sum(1 for r, ok in zip(rewards, consistent) if r > 0 and not ok) / n,
        })  # fmt: skip
        return checked, metrics

    def success_batch(self, completions, problems) -> list[float]:
        return self.scorer.score_batch(completions, [p.answer for p in problems])[0]

    def close(self) -> None:
        self.scorer.close()


class CodeReward:
    """Programs run against their problem's tests in the sandbox (:class:`sspo.rewards.CodeScorer`).

    The training reward is 1.0 when every test passes, or with ``partial`` the fraction of assertions
    that held; evaluation always asks for every test. A ``sandbox_error`` (the scorer's fault) is a
    reward of 0.0 counted in ``reward/error_frac``; every other status is the program's doing. The
    same program for the same problem is run once per batch (a group's samples often coincide).
    """

    error_hint = "the code sandbox failed; see docs/code_tasks.md (Degradation) and reward/sandbox_error_frac"

    def __init__(self, *, timeout: float = 5.0, memory_mb: int = 1024, partial: bool = False, workers: int | None = None):
        self.scorer = CodeScorer(workers, timeout=timeout, memory_mb=memory_mb)
        self.partial = partial
        self._last_error: str | None = None

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def grade_batch(self, completions, problems, *, partial: bool):
        """:meth:`CodeScorer.grade_batch`, running each distinct (program, problem) once."""
        keys = [(program_text(c, p.prefix), p.tests, p.entry_point) for c, p in zip(completions, problems)]
        first: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        unique = list(first.values())
        grades = self.scorer.grade_batch([completions[i] for i in unique], [problems[i] for i in unique], partial=partial)
        by_key = {keys[i]: g for i, g in zip(unique, grades)}
        out = [by_key[key] for key in keys]
        errors = [g.detail for g in out if g.status == "sandbox_error"]
        if errors:
            self._last_error = errors[-1][:300]
        return out

    def score_batch(self, completions, problems) -> tuple[list[float], dict[str, float]]:
        grades = self.grade_batch(completions, problems, partial=self.partial)
        metrics = code_metrics(grades)
        metrics["reward/error_frac"] = metrics["reward/sandbox_error_frac"]  # the trainer's verifier-fault key
        return [g.score for g in grades], metrics

    def success_batch(self, completions, problems) -> list[float]:
        return [float(g.status == "passed") for g in self.grade_batch(completions, problems, partial=False)]

    def close(self) -> None:
        self.scorer.close()


def reward_for_task(
    task: str, *, reward: str = "answer", timeout: float = 1.0, memory_mb: int = 1024, workers: int | None = None
) -> TaskReward:
    """The reward of task ``task``: :class:`CodeReward` for a code task (``reward="partial"``: partial
    credit), else :class:`MathReward` (``reward="answer_and_work"``: the work check)."""
    if is_code_task(task):
        return CodeReward(timeout=timeout, memory_mb=memory_mb, partial=reward == "partial", workers=workers)
    return MathReward(timeout=timeout, check_work=reward == "answer_and_work")


def task_reward(config: TrainConfig) -> TaskReward:
    """The reward of ``config.task``, with the ``rollout.reward_*`` / ``rollout.code_memory_mb`` settings."""
    t, r = config.task, config.rollout
    return reward_for_task(t.name, reward=t.reward, timeout=r.reward_timeout, memory_mb=r.code_memory_mb,
                           workers=r.reward_workers)  # fmt: skip
