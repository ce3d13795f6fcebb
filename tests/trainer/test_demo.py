"""`sspo demo` end to end on a shrunken budget: the summary's contract and the control."""

import json

import yaml

from sspo.demo import run_demo
from sspo.trainer import load_config, train

SMALL = [
    "warm_start.steps=3", "time_budget_s=1", "steps=2", "eval.num_problems=4", "eval.batch_size=4",
    "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6", "progress=false",
]  # fmt: skip


SUMMARY_KEYS = {"objective", "accuracy_before", "accuracy_after", "gain_points", "eval_problems", "steps",
                "train_seconds", "warm_start", "plot", "wall_seconds"}
"""The keys of ``summary.json`` (both demos; ``control_sft`` with ``--control``)."""


def test_demo_writes_the_summary_and_the_control(tmp_path, monkeypatch):
    monkeypatch.setenv("SSPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    summary = run_demo(str(out), control=True, overrides=SMALL)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and set(saved) == SUMMARY_KEYS | {"control_sft"}
    assert saved["objective"] == "sspo" and 1 <= saved["steps"] <= 2
    for key in ("accuracy_before", "accuracy_after"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["gain_points"] == 100 * (saved["accuracy_after"] - saved["accuracy_before"])
    assert saved["wall_seconds"] > saved["train_seconds"] > 0
    assert 0.0 <= saved["control_sft"]["accuracy"] <= 1.0 and saved["control_sft"]["steps"] >= 1
    assert (out / "plots" / "training.png").is_file()


def test_code_demo_writes_the_same_summary_with_pass_rates(tmp_path, monkeypatch):
    """``sspo demo --task code`` on a shrunken budget: the synthetic coding task, rewards from the sandbox,
    the math demo's summary keys (accuracies are held-out pass rates)."""
    monkeypatch.setenv("SSPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "code"
    summary = run_demo(str(out), control=True, overrides=SMALL, task="code")
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and set(saved) == SUMMARY_KEYS | {"control_sft"}
    assert saved["objective"] == "sspo" and 1 <= saved["steps"] <= 2
    assert 0.0 <= saved["accuracy_before"] <= 1.0 and 0.0 <= saved["accuracy_after"] <= 1.0
    assert saved["wall_seconds"] > saved["train_seconds"] > 0 and saved["control_sft"]["steps"] >= 1
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["task"]["name"] == "synthetic_code" and config["model"] == "tiny"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/passed_frac" in r and r["reward/error_frac"] == 0.0 for r in rows)  # scored in the sandbox


def test_a_fresh_warm_start_trains_exactly_like_its_cached_copy(tmp_path, monkeypatch):
    """The first run trains the warm start in process, the second loads it from the cache: both runs must
    give the same metrics (the warm start's last gradient once leaked into the first RL update)."""
    monkeypatch.setenv("SSPO_CACHE", str(tmp_path / "cache"))
    rows = {}
    for name in ("fresh", "cached"):
        overrides = [*SMALL, "warm_start.steps=4", "steps=3", "time_budget_s=none", "objective.entropy_coef=0.01", f"out_dir={tmp_path / name}"]
        train(load_config("demo", overrides))
        rows[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "cached" / "final_metrics.json").read_text())["warm_start"]["warm_start"] == "cached"
    keys = ("loss", "grad_norm", "reward/mean", "eval/accuracy")
    strip = [[{k: r.get(k) for k in keys} for r in rows[name]] for name in ("fresh", "cached")]
    assert any(r["grad_norm"] for r in strip[0]) and strip[0] == strip[1]


def test_both_demos_run_a_fixed_number_of_steps():
    """A demo is the same run on any machine: its RL phase ends on its step count, never on wall time."""
    for preset in ("demo", "demo-code"):
        config = load_config(preset, [])
        assert config.time_budget_s is None and config.steps >= 300, preset
