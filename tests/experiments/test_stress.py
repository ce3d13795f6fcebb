"""``sspo stress``: the ladder's plan, its statistics on known inputs, and a smoke run of the command."""

from __future__ import annotations

import csv
import math

import pytest

from sspo.cli import main
from sspo.experiments.stats import paired_bootstrap_ci, paired_diff
from sspo.experiments.stress.aggregate import (
    area_under_curve,
    cell_table,
    frontier,
    summarise_stress_run,
    wilson_interval,
)
from sspo.experiments.stress.ladder import FULL, LEVELS, QUICK, build_plan, variants

TINY = [
    "steps=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
    "eval.num_problems=4", "eval.every=1", "warm_start.steps=2", "warm_start.batch_size=4", "task.train_size=64",
    "rollout.truncated=score", "objective.entropy_coef=0.01",  # an untrained model: updates need a signal
]  # fmt: skip


# ----------------------------------------------------------------------------- the plan
def test_the_full_ladder_is_paired_within_a_seed(tmp_path):
    from sspo.experiments.stress.ladder import method_variants

    plan = build_plan(tmp_path, FULL, workers=2, overrides=[f"warm_start.cache_dir={tmp_path / 'cache'}"])
    methods = len(FULL.objectives)
    assert methods == 11 and len(FULL.levels) == 9
    assert len(plan.runs) == methods * (9 * 8 + 2 * 4)  # 8 seeds per cell, 12 in the headline levels L0 and L3
    assert {(j.setting, j.seed) for j in plan.runs if j.seed >= 8} == {(lv, s) for lv in ("L0", "L3") for s in range(8, 12)}
    headline = 11 * 2 * 12  # the headline levels' runs come first, seed-major: a short chunk leaves paired seeds there
    assert {j.setting for j in plan.runs[:headline]} == {"L0", "L3"} and [j.seed for j in plan.runs[:44:22]] == [0, 1]
    assert {j.setting for j in plan.runs[headline:]} == set(FULL.levels) - {"L0", "L3"}
    assert len(plan.warm_starts) == 2  # seeds split over two warm starts: even seeds on one, odd on the other
    assert all(job.needs == [plan.warm_starts[job.seed % 2].name] for job in plan.runs)
    plain = {name for name, v in method_variants().items() if not v.overrides}
    by_level = {}
    for job in plan.runs:
        by_level.setdefault((job.setting, job.seed), []).append(job)
    for (level, seed), jobs in by_level.items():
        overrides = next(lv.overrides for lv in LEVELS if lv.name == level)
        configs = [j.config for j in jobs if j.method in plain]
        for config in configs:
            assert config["seed"] == seed and config["threads"] == 1 and config["steps"] == 60
            assert config["update"]["mini_batches"] == overrides["update.mini_batches"]
            assert config["update"]["staleness"] == overrides["update.staleness"]
            assert config["async"]["max_staleness"] == overrides.get("async.max_staleness", config["async"]["max_staleness"])
            assert config["rollout"]["sampler_dtype"] == overrides.get("rollout.sampler_dtype", "same")
            assert config["eval"]["num_problems"] >= 500
            # paired: everything but the objective (and the run directory) is the same within a level and seed
            strip = {k: v for k, v in config.items() if k not in ("objective", "out_dir")}
            assert strip == {k: v for k, v in configs[0].items() if k not in ("objective", "out_dir")}
        (tis,) = [j.config for j in jobs if j.method == "grpo-tis"]
        assert tis["update"]["old_logprobs"] == "proximal"
        assert tis["objective"]["rollout_correction"]["rollout_is"] == "token"
    assert [lv.name for lv in LEVELS if lv.name.startswith("L")] == ["L0", "L1", "L2", "L3", "L4"]


def test_each_level_changes_one_thing_from_the_one_before():
    from sspo.experiments.stress.ladder import level

    chain = ["L0", "L1", "L2", "L3", "L4"]
    for a, b in zip(chain, chain[1:]):
        x, y = level(a).overrides, level(b).overrides
        assert len({k for k in x.keys() | y.keys() if x.get(k) != y.get(k)}) == 1, (a, b)
    for name in ("M1", "A2", "A4", "A8"):  # each a change of L1 (4 updates per rollout, on-policy rollouts)
        base, here = level("L1").overrides, level(name).overrides
        changed = {k for k in base.keys() | here.keys() if base.get(k) != here.get(k)}
        assert changed <= {"rollout.sampler_dtype", "async.workers", "async.max_staleness"}, name


def test_sweeps_hold_the_temperatures_matched_to_grpos_clip():
    sweeps = {v.method: v for group in variants().values() for v in group}
    matched = sweeps["sspo-tau-matched"].params
    assert matched == {"tau_pos": round(1 / math.log(1.2), 4), "tau_neg": round(1 / abs(math.log(0.8)), 4)}
    assert sweeps["sspo-tau-10"].params == {"tau_pos": 10, "tau_neg": 10.5}
    assert sweeps["sspo-arctan_ratio-tau-10"].params["gate"] == "arctan_ratio"
    assert {v.objective for v in sweeps.values()} == {"sspo", "sapo"}


def test_the_quick_ladder_is_small(tmp_path):
    plan = build_plan(tmp_path, QUICK, workers=2, overrides=[f"warm_start.cache_dir={tmp_path / 'cache'}"])
    assert len(plan.runs) == 2 * 3 * 3 and {j.config["steps"] for j in plan.runs} == {30}


def test_a_dry_run_prints_the_runs_bound_and_an_estimated_time(tmp_path, capsys):
    cache = f"warm_start.cache_dir={tmp_path / 'cache'}"
    assert main(["stress", "--quick", "--dry-run", "--out", str(tmp_path / "out"), "--workers", "2", cache]) == 0
    out = capsys.readouterr().out
    assert "each run: 30 steps (no time budget)" in out and "None" not in out
    (line,) = [x for x in out.splitlines() if x.startswith("estimated time of what is left: ")]
    assert line.startswith("estimated time of what is left: about ") and "an estimate" in line
    minutes = float(line.split("about ")[1].split(" min")[0])
    assert 4 <= minutes <= 9  # an estimate of 6.4 minutes; measured 7.3 with its own warm start (docs/results.md)


def test_the_cost_model_reproduces_the_measured_runs(tmp_path):
    from sspo.experiments.runner import estimate_plan_seconds, estimate_run, run_bound, run_config

    demo = run_config("demo", "sspo", out_dir=tmp_path / "demo", overrides=["time_budget_s=null", "steps=100",
                                                                             "eval.every=0"])  # fmt: skip
    step_s = (estimate_run(demo)["train_s"]) / 100
    assert step_s == pytest.approx(0.62, rel=0.05)  # the demo's 390 steps in 240 s
    budget = run_config("tiny", "sspo", out_dir=tmp_path / "tiny")
    assert estimate_run(budget)["train_s"] == 180  # the time budget ends the run before its 1000 steps
    assert run_bound(budget) == "180 s of training or 1000 steps, whichever comes first (evaluation time not counted)"
    assert run_bound(demo) == "100 steps (no time budget)"
    full = build_plan(tmp_path / "full", FULL, workers=2, overrides=[f"warm_start.cache_dir={tmp_path / 'cache'}"])
    assert estimate_plan_seconds(full) / 3600 == pytest.approx(4.6, rel=0.05)  # 880 runs of 60 steps
    other = run_config("tiny", "sspo", out_dir=tmp_path / "x", overrides=["model=Qwen/Qwen2.5-0.5B-Instruct"])
    assert estimate_run(other) is None  # outside the cost model: no number is made up


def test_every_objective_is_accepted_and_the_default_set_is_unchanged(tmp_path, capsys):
    import dataclasses

    import sspo
    from sspo.experiments.stress.ladder import MAIN_OBJECTIVES

    assert FULL.objectives == MAIN_OBJECTIVES == ("grpo", "gspo", "gmpo", "sapo", "cispo", "sspo", "sspo-matched",
                                                  "vespo", "m2po", "dppo_tv", "grpo-tis")  # fmt: skip
    assert QUICK.objectives == ("grpo", "sspo", "sapo")
    ladder = dataclasses.replace(QUICK, objectives=tuple(sspo.OBJECTIVES), seeds=1)
    plan = build_plan(tmp_path / "all", ladder, workers=2, overrides=[f"warm_start.cache_dir={tmp_path / 'cache'}"])
    assert [j.method for j in plan.runs] == [*sspo.OBJECTIVES] * 3
    assert all(j.config["objective"]["name"] == j.method for j in plan.runs)
    assert all(j.config["objective"]["params"] == {} for j in plan.runs if j.method != "sspo")
    new = "grpo,vespo,luspo,dppo_tv,dppo_kl,m2po"
    assert main(["stress", "--quick", "--objectives", new, "--dry-run", "--workers", "2", "--out",
                 str(tmp_path / "cli"), f"warm_start.cache_dir={tmp_path / 'cache'}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert all(f"L4/{name}/seed1" in out for name in new.split(","))


def test_the_report_treats_every_objective_as_one_not_as_a_sweep(tmp_path):
    """Objectives outside the default six get a frontier line and curves; only sweep variants make the sweep plot."""
    import json

    from sspo.experiments.stress.report import objective_order, write_report

    for method, accuracies in (("grpo", [0.3, 0.35]), ("vespo", [0.3, 0.4]), ("m2po", [0.3, 0.1])):
        for seed in range(2):
            run = tmp_path / "runs" / "L0" / method / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(accuracies, ppo_kl=0.01)))
            (run / "final_metrics.json").write_text("{}")
    result = write_report(tmp_path)
    assert set(result["frontier"]) == {"grpo", "vespo", "m2po"}
    assert result["frontier"]["vespo"]["mean"] == "L0" and result["frontier"]["m2po"]["mean"] is None
    text = (tmp_path / "stress.md").read_text()
    assert "- **vespo**: L0" in text and "- **m2po**: none" in text
    html = (tmp_path / "report.html").read_text()
    assert "Accuracy along the ladder" in html and "Gates and temperatures" not in html
    assert objective_order()[:11] == list(FULL.objectives) and {"vespo", "m2po"} <= set(objective_order())


def test_the_baseline_is_required(tmp_path):
    import dataclasses

    from sspo.trainer import ConfigError

    with pytest.raises(ConfigError, match="--objectives: must include grpo"):
        build_plan(tmp_path, dataclasses.replace(QUICK, objectives=("sspo",)))
    with pytest.raises(ConfigError, match="--levels: unknown level 'L9'"):
        build_plan(tmp_path, dataclasses.replace(QUICK, levels=("L9",)))


# ----------------------------------------------------------------------------- statistics
def test_paired_difference_on_known_inputs():
    d = paired_diff([0.5, 0.6, 0.7, math.nan], [0.4, 0.4, 0.5, 0.3])  # the NaN pair is dropped
    assert d["n"] == 3 and d["mean"] == pytest.approx(1 / 6)
    half = 4.302652729911275 * math.sqrt(1 / 300) / math.sqrt(3)  # t_{0.975,2}·s/√n, s = 0.0577
    assert d["half"] == pytest.approx(half, rel=1e-9) and d["lo"] == pytest.approx(1 / 6 - half)
    assert paired_bootstrap_ci([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == (0.5, 0.5)  # constant differences
    lo, hi = paired_bootstrap_ci([0.1, 0.5, 0.2, 0.9, 0.4], [0.0] * 5, resamples=20_000)
    assert 0.1 <= lo < 0.42 < hi <= 0.9
    with pytest.raises(ValueError, match="differ in length"):
        paired_diff([1.0], [1.0, 2.0])


def test_wilson_interval_and_area_under_the_curve():
    assert wilson_interval(0, 8) == (0.0, pytest.approx(0.32440, abs=1e-5))
    assert wilson_interval(8, 8) == (pytest.approx(0.67560, abs=1e-5), 1.0)
    assert area_under_curve([(0, 0.3), (10, 0.5), (20, 0.4)]) == pytest.approx(0.425)
    assert area_under_curve([(0, 0.3), (10, 0.5), (10, 0.7)]) == pytest.approx(0.5)  # the final eval replaces


def _rows(accuracies, **per_step):
    rows = [{"step": 0, "eval/accuracy": accuracies[0]}]
    for step, acc in enumerate(accuracies[1:], start=1):
        rows.append({"step": step, "time/step_s": 1.0, "eval/accuracy": acc, **per_step})
    return rows


def test_a_run_collapses_when_it_stays_ten_points_below_its_start_and_one_low_evaluation_is_a_dip():
    held = summarise_stress_run(_rows([0.35, 0.26, 0.40], ppo_kl=0.01, **{"gate/attenuated_frac": 0.2}))
    assert held["collapsed"] == 0.0 and held["dipped"] == 0.0 and held["acc_final"] == 0.40
    assert held["gain"] == pytest.approx(0.05) and held["restricted_frac"] == 0.2 and held["ppo_kl"] == 0.01
    dipped = summarise_stress_run(_rows([0.35, 0.25, 0.40], pg_clipfrac=0.1))
    assert dipped["collapsed"] == 0.0 and dipped["dipped"] == 1.0
    assert dipped["restricted_frac"] == 0.1 and dipped["acc_best"] == 0.40
    assert summarise_stress_run(_rows([0.35, 0.25, 0.24, 0.40]))["collapsed"] == 1.0  # two in a row
    assert summarise_stress_run(_rows([0.35, 0.40, 0.25]))["collapsed"] == 1.0  # the final one


def _record(level, method, seed, final, start=0.3):
    return {"level": level, "method": method, "seed": seed, "acc_start": start, "acc_final": final,
            "acc_best": final, "auc": final, "gain": final - start, "collapsed": float(final < start - 0.1),
            "ppo_kl": 0.1, "abs_log_ratio_p50": 0.0, "abs_log_ratio_p99": 1.0, "seq_weight_ess": 1.0,
            "effective_ratio": 1.0, "restricted_frac": 0.0, "ess_min": 1.0, "nonfinite_updates": 0}  # fmt: skip


def test_cells_pair_seeds_against_grpo_and_the_frontier_reads_the_ladder():
    records = []
    for seed, (g0, s0, g1, s1) in enumerate([(0.40, 0.45, 0.35, 0.10), (0.42, 0.44, 0.33, 0.15),
                                             (0.38, 0.47, 0.31, 0.12)]):  # fmt: skip
        records += [_record("L0", "grpo", seed, g0), _record("L0", "sspo", seed, s0),
                    _record("L1", "grpo", seed, g1), _record("L1", "sspo", seed, s1)]  # fmt: skip
    table = cell_table(records, level_order=["L0", "L1"])
    assert [(r["level"], r["method"]) for r in table] == [("L0", "grpo"), ("L0", "sspo"), ("L1", "grpo"), ("L1", "sspo")]
    l1_sspo = table[3]
    assert l1_sspo["d_acc_final_vs_grpo"] == pytest.approx(-0.20666666, abs=1e-6)
    assert l1_sspo["d_acc_final_pairs"] == 3 and l1_sspo["d_acc_final_t_hi"] < 0
    assert l1_sspo["collapse_rate"] == 1.0 and l1_sspo["collapse_lo"] > 0.4
    assert table[0]["d_acc_final_vs_grpo"] == 0.0
    front = frontier(table, ["L0", "L1"])
    assert front["grpo"] == {"mean": "L1", "certain": "L0", "possible": "L1"}
    assert front["sspo"] == {"mean": "L0", "certain": "L0", "possible": "L0"}


# ----------------------------------------------------------------------------- the command
def test_smoke_stress_with_a_mismatched_sampler(tmp_path):
    out = tmp_path / "stress"
    argv = ["stress", "--quick", "--levels", "M1", "--objectives", "grpo,sspo", "--seeds", "1", "--sweeps", "",
            "--workers", "2", "--out", str(out), *TINY, f"warm_start.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 0
    with open(out / "stress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["level"], r["method"]) for r in rows] == [("M1", "grpo"), ("M1", "sspo")]
    assert all(r["seeds"] == "1" for r in rows)
    assert all(float(r["abs_log_ratio_p99"]) > 0 for r in rows)  # the bf16 sampler: ratios != 1 from the start
    html = (out / "report.html").read_text()
    assert html.count("<img src=\"data:image/png;base64,") == 3 and "Stability frontier" in html
    assert "half-width of a Student-t 95 % confidence interval" in (out / "stress.md").read_text()
    assert main([*argv, "--report-only"]) == 0  # re-aggregates what is there


def test_async_levels_run_rollout_workers_and_their_staleness_reaches_the_table(tmp_path):
    from sspo.experiments.stress.aggregate import cell_table, summarise_stress_run
    from sspo.experiments.stress.ladder import ASYNC_LEVELS, Ladder
    from sspo.experiments.stress.report import markdown_table

    assert [lv.name for lv in ASYNC_LEVELS] == ["A0", "A2", "A4", "A8"]
    assert {"A2", "A4", "A8"} <= set(FULL.levels) and "A0" not in FULL.levels  # A0 is L1 (one worker, no lag)
    ladder = Ladder(levels=("A2", "A8"), objectives=("grpo", "sspo"), seeds=1, sweeps=(), sweep_levels=())
    plan = build_plan(tmp_path, ladder, workers=1, overrides=[f"warm_start.cache_dir={tmp_path / 'cache'}"])
    got = {(job.setting, job.config["async"]["workers"], job.config["async"]["max_staleness"]) for job in plan.runs}
    assert got == {("A2", 1, 2), ("A8", 1, 8)}
    assert all(job.config["update"]["staleness"] == 0 for job in plan.runs)
    rows = [{"step": 0, "eval/accuracy": 0.3}]
    rows += [{"step": s, "time/step_s": 1.0, "async/staleness_mean": m, "async/staleness_max": m, "ppo_kl": 0.01}
             for s, m in ((1, 0.0), (2, 2.0), (3, 4.0))]
    rows += [{"step": 3, "eval/accuracy": 0.4}]
    summary = summarise_stress_run(rows)
    assert summary["staleness_mean"] == 2.0 and summary["staleness_max"] == 2.0
    table = cell_table([{"level": "A8", "method": m, "seed": 0, **summary} for m in ("grpo", "sspo")])
    text = markdown_table(table)
    assert "staleness mean / max" in text and "2.00 / 2.00" in text
