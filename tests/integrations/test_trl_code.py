"""TRL with code: ``CodeRewardFunc`` (a ``GRPOTrainer`` reward function running programs in sspo's sandbox)
and examples/trl/train_leetcode.py, 2 optimizer steps on CPU with the tiny model on in-repo LeetCode rows."""

import importlib.util
import json
import pickle
from pathlib import Path

import pytest

if importlib.util.find_spec("trl") is None:
    pytest.skip("TRL is not installed (pip install 'sspo[trl]')", allow_module_level=True)

from sspo.integrations.trl import CodeRewardFunc

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl" / "train_leetcode.py"
MODULE_SPEC = importlib.util.spec_from_file_location("trl_leetcode_example", EXAMPLE)
example = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(example)

TESTS = "def check(candidate):\n    assert candidate(a=1, b=2) == 3\n    assert candidate(a=2, b=2) == 4\n"
RIGHT = "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```"
HALF = "class Solution:\n    def add(self, a, b):\n        return 3"


@pytest.fixture(scope="module")
def reward():
    func = CodeRewardFunc(timeout=5.0, workers=2)
    yield func
    func.close()


def test_code_reward_func_runs_each_rows_tests(reward):
    logged = {}
    completions = [RIGHT, [{"role": "assistant", "content": RIGHT}], HALF, "import os\nos._exit(0)"]
    scores = reward(completions, tests=[TESTS] * 4, entry_point=["Solution().add"] * 4,
                    prefix=["from typing import *\n", "", None, ""], log_metric=lambda k, v: logged.update({k: v}))  # fmt: skip
    assert scores == [1.0, 1.0, 0.0, 0.0] and logged == {"code/sandbox_error_frac": 0.0}
    assert reward([RIGHT], tests=[TESTS], entry_point=["Solution().add"]) == [1.0]  # no prefix column
    partial = CodeRewardFunc(partial=True, workers=1)
    try:
        assert partial([HALF], tests=[TESTS], entry_point=["Solution().add"]) == [0.5]
    finally:
        partial.close()
    copy = pickle.loads(pickle.dumps(reward))  # TRL may pickle reward functions; the judges start again
    assert copy._scorer is None and copy.timeout == 5.0 and reward.__name__ == "code_reward"
    with pytest.raises(ValueError, match="timeout"):
        CodeRewardFunc(timeout=0)


SMALL = [  # the preset's shape scaled down: 2 prompts × 4 samples, 4 updates of 2 responses, 8 tokens
    "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
    "update.micro_batch_size=2", "optim.warmup_steps=0", "optim.lr=0.01", "device=cpu", "dtype=float32",
    "task.template=raw",
]  # fmt: skip


def test_two_steps_on_cpu_with_the_tiny_model(tmp_path, monkeypatch):
    rows = [{"task_id": f"toy-{i}", "query": f"Add {i}.\n```python\nclass Solution:\n    def add(self, a, b):\n```",
             "prompt": "from typing import *\n", "entry_point": "Solution().add", "difficulty": "Easy", "test": TESTS,
             "completion": "class Solution:\n    def add(self, a, b):\n        return a + b\n"} for i in range(4)]  # fmt: skip
    (tmp_path / "leetcode-train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    real_call = CodeRewardFunc.__call__

    def spy(self, completions, **kwargs):
        scores = real_call(self, completions, **kwargs)
        seen.append((len(completions), kwargs["entry_point"][0], scores))
        return scores

    monkeypatch.setattr(CodeRewardFunc, "__call__", spy)
    trainer = example.main(["--objective", "sspo", "--model", "tiny", "--output-dir", str(tmp_path / "out"),
                            "--max-steps", "2", "--report-to", "none", f"task.path={tmp_path}", *SMALL])  # fmt: skip
    assert trainer.state.global_step == 2 and trainer.args.sspo_objective == "sspo"
    assert seen and seen[0][:2] == (8, "Solution().add") and all(s == 0.0 for s in seen[0][2])  # 8 chars: no program
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert "rewards/code_reward/mean" in logs[0] and "code/sandbox_error_frac" in logs[0]
