"""The trainer on a code task: the task chooses the reward (programs run against tests in the sandbox),
evaluation counts only programs that pass every test, a sandbox failure takes the verifier-error path,
and one code rollout and update run end to end."""

from __future__ import annotations

import json

import pytest
from trainer_cases import tiny_config

from sspo.tasks import CodeProblem, load_task
from sspo.trainer import Trainer, TrainingError
from sspo.trainer.rewards import CodeReward, MathReward, task_reward

ADD = CodeProblem(question="add", tests="def check(candidate):\n    assert candidate(1, 2) == 3\n"
                  "    assert candidate(2, 2) == 4\n    assert candidate(0, 5) == 5\n    assert candidate(3, 0) == 3\n",
                  entry_point="add")  # fmt: skip
RIGHT = "```python\ndef add(a, b):\n    return a + b\n```"
HALF = "def add(a, b):\n    return 3 if a == 1 else a + b if b == 2 else -1"  # holds for 2 of the 4 assertions
BROKEN_TESTS = CodeProblem(question="broken", tests="def check(candidate):\n    assert candidate(1) == 1\n"
                           "raise RuntimeError('the tests themselves are broken')\n", entry_point="add")  # fmt: skip


def quiet(*_args):
    return None


@pytest.fixture(scope="module")
def code_reward():
    reward = CodeReward(timeout=5.0, workers=2)
    yield reward
    reward.close()


def test_the_task_chooses_the_reward(tmp_path):
    assert isinstance(task_reward(tiny_config(tmp_path)), MathReward)
    code = task_reward(tiny_config(tmp_path, "task.name=synthetic_code", "task.reward=partial", "rollout.reward_timeout=3",
                                   "rollout.code_memory_mb=512"))  # fmt: skip
    try:
        assert isinstance(code, CodeReward) and code.partial
        assert (code.scorer.timeout, code.scorer.memory_mb) == (3.0, 512)
    finally:
        code.close()


def test_code_rewards_metrics_and_strict_evaluation(code_reward):
    rewards, metrics = code_reward.score_batch([RIGHT, HALF, "def add(a, b) return", "print('passed')"], [ADD] * 4)
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert metrics["reward/mean"] == 0.25 and metrics["reward/passed_frac"] == 0.25
    assert metrics["reward/syntax_error_frac"] == 0.25 and metrics["reward/failed_frac"] == 0.5
    assert metrics["reward/error_frac"] == 0.0
    partial = CodeReward(timeout=5.0, partial=True, workers=1)
    try:
        rewards, metrics = partial.score_batch([RIGHT, HALF], [ADD, ADD])
        assert rewards == [1.0, 0.5]  # the fraction of assertions that held
        assert partial.success_batch([RIGHT, HALF], [ADD, ADD]) == [1.0, 0.0]  # evaluation: every test or nothing
    finally:
        partial.close()


def test_the_same_program_for_the_same_problem_runs_once(code_reward, monkeypatch):
    seen = []
    real = code_reward.scorer.grade_batch

    def spy(completions, problems, **kwargs):
        seen.append(len(completions))
        return real(completions, problems, **kwargs)

    monkeypatch.setattr(code_reward.scorer, "grade_batch", spy)
    other = CodeProblem(question="add too", tests=ADD.tests + "    assert candidate(1, 1) == 2\n", entry_point="add")
    # the fence is not part of the program: RIGHT and its bare code are one program
    rewards, _ = code_reward.score_batch([RIGHT, RIGHT, "def add(a, b):\n    return a + b", HALF, RIGHT], [ADD, ADD, ADD, ADD, other])
    assert rewards == [1.0, 1.0, 1.0, 0.0, 1.0] and seen == [3]


def test_a_sandbox_error_is_a_verifier_error_for_the_trainer(tmp_path, code_reward):
    rewards, metrics = code_reward.score_batch([RIGHT, RIGHT], [ADD, BROKEN_TESTS])
    assert rewards == [1.0, 0.0] and metrics["reward/error_frac"] == metrics["reward/sandbox_error_frac"] == 0.5
    assert code_reward.last_error  # the judge's reason, for the warning
    logged = []
    trainer = Trainer(tiny_config(tmp_path, "task.name=synthetic_code", "rollout.max_reward_error_frac=0.6"),
                      log=logged.append)  # fmt: skip
    trainer.scorer.close()
    trainer.scorer = code_reward
    trainer._check_rewards(1, metrics)
    trainer._check_rewards(2, metrics)
    warnings = [m for m in logged if "verifier errors" in m]
    assert len(warnings) == 1 and "step 1: 50% of the rewards" in warnings[0]
    with pytest.raises(TrainingError, match=r"max_reward_error_frac: 100% of step 3's rewards .*code sandbox failed"):
        trainer._check_rewards(3, code_reward.score_batch([RIGHT], [BROKEN_TESTS])[1])


def test_a_code_task_trains_end_to_end(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "task.name=synthetic_code", "steps=2", "rollout.max_new_tokens=12",
                                  "rollout.truncated=score"), log=quiet)  # fmt: skip
    assert all(isinstance(p, CodeProblem) for p in trainer.train_problems + trainer.eval_problems)
    summary = trainer.run()
    assert summary["steps"] == 2 and 0.0 <= summary["accuracy_after"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r["step"] == 1 and "reward/mean" in r)
    statuses = sum(step[f"reward/{s}_frac"] for s in ("passed", "failed", "timeout", "crashed", "syntax_error",
                                                      "sandbox_error"))  # fmt: skip
    assert statuses == pytest.approx(1.0) and step["reward/error_frac"] == 0.0
    assert step["reward/syntax_error_frac"] > 0.5  # an untrained model's 12 characters rarely compile


def test_warm_start_pairs_come_from_the_reference_programs(tmp_path):
    from sspo.models.loading import load_model_and_tokenizer
    from sspo.trainer.warm_start import sft_pairs

    _, tokenizer = load_model_and_tokenizer("tiny")
    problems = load_task("synthetic_code", "train", limit=3)
    assert sft_pairs(problems, tokenizer, "raw") == [(p.question + "\n", p.solution) for p in problems]
