"""``sspo compare``: the plan, and a smoke run of the real command (2 objectives x 1 seed x 2 steps)."""

from __future__ import annotations

import csv
import json

import pytest

from sspo.cli import main
from sspo.experiments.compare.plan import ABLATIONS, SETTINGS, build_plan, execute_plan
from sspo.experiments.runner import objective_preset, run_config

TINY = [
    "steps=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
    "eval.num_problems=4", "eval.every=1", "warm_start.steps=2", "warm_start.batch_size=4", "task.train_size=64",
]  # fmt: skip


def test_objective_params_reset_unless_the_preset_is_written_for_it(tmp_path):
    sspo = run_config("tiny", "sspo", setting=SETTINGS["offpolicy"], seed=3, out_dir=tmp_path / "a", budget_s=30)
    assert sspo["objective"]["params"] == {"gate": "arctan", "tau_pos": 1.0, "tau_neg": 1.05}
    assert (sspo["update"]["mini_batches"], sspo["update"]["staleness"], sspo["seed"]) == (4, 2, 3)
    assert sspo["time_budget_s"] == 30 and sspo["progress"] is False
    grpo = run_config("tiny", "grpo", setting=SETTINGS["onpolicy"], out_dir=tmp_path / "b")
    assert grpo["objective"] == {**grpo["objective"], "name": "grpo", "params": {}}
    assert (grpo["update"]["mini_batches"], grpo["update"]["staleness"]) == (1, 0)
    assert grpo["time_budget_s"] == 180  # the preset's
    gate = run_config("tiny", "sspo", params={"gate": "gaussian"}, out_dir=tmp_path / "c")
    assert gate["objective"]["params"]["gate"] == "gaussian" and gate["objective"]["params"]["tau_pos"] == 1.0


def test_paper_presets_use_their_per_objective_siblings(tmp_path):
    assert objective_preset("qwen2.5-0.5b-gsm8k", "grpo") == "qwen2.5-0.5b-gsm8k-grpo"
    assert objective_preset("qwen2.5-0.5b-gsm8k-sspo", "gmpo") == "qwen2.5-0.5b-gsm8k-gmpo"
    assert objective_preset("tiny", "grpo") == "tiny"
    config = run_config("qwen2.5-0.5b-gsm8k-sspo", "grpo", out_dir=tmp_path / "q")
    assert config["objective"]["params"] == {"eps_low": 0.2, "eps_high": 0.28}
    assert config["update"]["mini_batches"] == 4  # the "preset" setting keeps the preset's own


def test_plan_covers_the_matrix_seed_major(tmp_path):
    plan = build_plan(tmp_path, preset="tiny", objectives=["sspo", "grpo"], seeds=2, settings=["onpolicy", "offpolicy"],
                      ablations=["gates", "tau"], ablation_seeds=1, budget_s=60, workers=2,
                      overrides=["warm_start.cache_dir=" + str(tmp_path / "cache")])  # fmt: skip
    names = [j.name for j in plan.runs]
    assert len(names) == 2 * 2 * 2 + len(ABLATIONS["gates"]) + len(ABLATIONS["tau"])
    assert names[:4] == ["onpolicy/sspo/seed0", "onpolicy/grpo/seed0", "offpolicy/sspo/seed0", "offpolicy/grpo/seed0"]
    assert all(n.endswith("seed0") for n in names[:8]) and all(n.endswith("seed1") for n in names[8:])
    assert {j.config["threads"] for j in plan.runs} == {1}
    assert len(plan.warm_starts) == 1 and len(plan.warm_starts[0].links) == 2  # one, linked under each seed's key
    assert {j.config["warm_start"]["cache_dir"] for j in plan.runs} == {str((tmp_path / "warm_starts").resolve())}
    per_seed = build_plan(tmp_path, preset="tiny", objectives=["sspo", "grpo"], seeds=2, settings=["onpolicy"],
                          workers=2, warm_start="per-seed", overrides=[f"warm_start.cache_dir={tmp_path / 'c2'}"])
    assert len(per_seed.warm_starts) == 2 and not per_seed.warm_starts[0].links  # one per seed
    assert {j.config["warm_start"]["cache_dir"] for j in per_seed.runs} == {str(tmp_path / "c2")}
    assert [j.name for j in plan.controls] == ["control/sft/seed0", "control/sft/seed1"]
    tau = next(j for j in plan.runs if j.method == "sspo-tau-2")
    assert tau.setting == "offpolicy" and tau.config["objective"]["params"]["tau_neg"] == pytest.approx(2.1)
    assert set(SETTINGS["offpolicy"]) == {"update.mini_batches", "update.epochs", "update.staleness"}


def test_a_dry_run_prints_the_runs_bound_and_an_estimated_time(tmp_path, capsys):
    cache = f"warm_start.cache_dir={tmp_path / 'cache'}"
    assert main(["compare", "--dry-run", "--out", str(tmp_path / "a"), "--workers", "2", cache]) == 0
    out = capsys.readouterr().out
    assert "each run: 180 s of training or 1000 steps, whichever comes first" in out and "None" not in out
    assert "estimated time of what is left: about " in out and "an estimate" in out
    assert main(["compare", "--dry-run", "--preset", "stress", "--out", str(tmp_path / "b"), cache]) == 0
    out = capsys.readouterr().out
    assert "each run: 60 steps (no time budget)" in out and "None" not in out


def test_every_objective_of_the_registry_is_accepted(tmp_path, capsys):
    import sspo

    cache = f"warm_start.cache_dir={tmp_path / 'cache'}"
    plan = build_plan(tmp_path / "all", preset="tiny", objectives=list(sspo.OBJECTIVES), seeds=1, settings=["offpolicy"],
                      controls=False, workers=2, overrides=[cache])  # fmt: skip
    assert [j.method for j in plan.runs] == list(sspo.OBJECTIVES)
    for job in plan.runs:  # each its own objective, with its defaults (the tiny preset is written for sspo)
        assert job.config["objective"]["name"] == job.method
        assert job.config["objective"]["params"] == ({"gate": "arctan", "tau_pos": 1.0, "tau_neg": 1.05}
                                                     if job.method == "sspo" else {})  # fmt: skip
        assert job.config["objective"]["loss_agg_mode"] is None and job.config["update"]["staleness"] == 2
    new = "vespo,luspo,dppo_tv,dppo_kl,m2po"
    assert main(["compare", "--objectives", f"grpo,{new}", "--settings", "onpolicy", "--dry-run", "--workers", "2",
                 "--out", str(tmp_path / "cli"), cache]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert all(f"onpolicy/{name}/seed2" in out for name in new.split(","))


def test_unknown_names_are_refused(tmp_path, capsys):
    assert main(["compare", "--objectives", "sspo,nope", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err
    assert main(["compare", "--settings", "sideways", "--out", str(tmp_path), "--dry-run"]) == 2


def test_smoke_compare_two_objectives(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--objectives", "sspo,grpo", "--seeds", "1", "--settings", "onpolicy", "--workers", "2",
            "--out", str(out), *TINY, f"warm_start.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(args) == 0
    for name in ("results.csv", "runs.csv", "results.md", "report.html", "compare.log", "plots/accuracy.png",
                 "plots/curves_onpolicy.png", "controls/sft/seed0/result.json"):  # fmt: skip
        assert (out / name).is_file(), name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("onpolicy", "grpo"), ("onpolicy", "sspo"), ("control", "no-training"), ("control", "sft")]
    for column in ("acc_final_mean", "acc_final_ci95", "gain_vs_none_mean", "gain_vs_sft_mean", "grad_norm_max_mean",
                   "loss_spikes_mean", "seq_weight_ess_mean", "restricted_frac_mean", "tokens_per_s_mean", "n_seeds"):
        assert column in rows[0], column
    for row in rows[:2]:
        assert row["n_seeds"] == "1" and 0.0 <= float(row["acc_final_mean"]) <= 1.0
        assert float(row["steps_mean"]) == 2 and float(row["tokens_per_s_mean"]) > 0
    sft = json.loads((out / "controls" / "sft" / "seed0" / "result.json").read_text())
    assert 0.0 <= sft["accuracy"] <= 1.0 and sft["budget_s"] > 0
    page = (out / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2
    log = (out / "compare.log").read_text()
    assert "done onpolicy/sspo/seed0" in log and "done control/sft/seed0" in log

    # resumable: the plan finds everything done, and executing it runs nothing
    plan = build_plan(out, preset="tiny", objectives=["sspo", "grpo"], seeds=1, settings=["onpolicy"], workers=2,
                      overrides=[*TINY, f"warm_start.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    assert "runs: 2 (0 to do)" in plan.describe() and "controls: 1 (0 to do)" in plan.describe()
    assert execute_plan(plan, echo=False) == []
    log = (out / "compare.log").read_text()
    assert "runs: 2 of 2 already done, skipped" in log and "controls: 1 of 1 already done, skipped" in log
    assert log.count("done onpolicy/sspo/seed0") == 1


def test_scheduler_respects_dependencies_and_skips_after_a_failed_warm_start(tmp_path, monkeypatch):
    from sspo.experiments import runner

    plan = build_plan(tmp_path / "out", preset="tiny", objectives=["sspo", "grpo"], seeds=2, settings=["onpolicy"],
                      workers=2, warm_start="per-seed", overrides=[f"warm_start.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    events: list[tuple[str, str]] = []
    broken = plan.warm_starts[1].name

    def fake_spawn(job, payload, log_path):
        events.append(("start", job.name))
        if job.name == broken:
            events.append(("end", job.name))
            return 1
        job.result_file.parent.mkdir(parents=True, exist_ok=True)
        result = {"train": {"accuracy_before": 0.1, "accuracy_after": 0.2, "steps": 3, "train_seconds": 7.0,
                            "wall_seconds": 9.0},
                  "sft": {"accuracy": 0.15, "steps": 5, "seconds": payload.get("seconds", 0)},
                  "warm_start": {"steps": 1, "seconds": 0.0}}[job.kind]  # fmt: skip
        job.result_file.write_text(json.dumps(result))
        events.append(("end", job.name))
        return 0

    monkeypatch.setattr(runner, "_spawn", fake_spawn)
    failed = execute_plan(plan, echo=False)
    assert sorted(failed) == sorted([broken, "onpolicy/sspo/seed1", "onpolicy/grpo/seed1", "control/sft/seed1"])
    ended = {name: i for i, (kind, name) in enumerate(events) if kind == "end"}
    started = {name: i for i, (kind, name) in enumerate(events) if kind == "start"}
    for job in plan.runs + plan.controls:
        if job.seed == 0:
            assert all(ended[n] < started[job.name] for n in job.needs + job.after), job.name
        else:
            assert job.name not in started
    sft = json.loads(plan.controls[0].result_file.read_text())
    assert sft["seconds"] == 7.0  # the mean training time of the seed's runs
    assert "SKIPPED control/sft/seed1" in (tmp_path / "out" / "compare.log").read_text()
