"""`sspo demo` end to end on a shrunken budget: the summary's contract and the control."""

import json

from sspo.demo import run_demo

SMALL = [
    "warm_start.steps=3", "time_budget_s=1", "steps=2", "eval.num_problems=4", "eval.batch_size=4",
    "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6", "progress=false",
]  # fmt: skip


def test_demo_writes_the_summary_and_the_control(tmp_path, monkeypatch):
    monkeypatch.setenv("SSPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    summary = run_demo(str(out), control=True, overrides=SMALL)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    assert saved["objective"] == "sspo" and 1 <= saved["steps"] <= 2
    for key in ("accuracy_before", "accuracy_after"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["gain_points"] == 100 * (saved["accuracy_after"] - saved["accuracy_before"])
    assert saved["wall_seconds"] > saved["train_seconds"] > 0
    assert 0.0 <= saved["control_sft"]["accuracy"] <= 1.0 and saved["control_sft"]["steps"] >= 1
    assert (out / "plots" / "training.png").is_file()
