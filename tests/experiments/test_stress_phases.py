"""The phases of the powered stress ladder: the report reads run directories and committed records alike,
the lr of each method comes from the tuning runs, and committed runs are not run again."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json

import pytest
import yaml

from sspo.experiments.stress.ladder import MAIN, MAIN_METHODS, TUNE, Ladder
from sspo.experiments.stress.phases import chosen_lrs, phase_plan, recorded_runs
from sspo.experiments.stress.report import collect_phases, write_report


def _run(root, level, variant, seed, accuracies, *, lr, group=0, problems=500, ppo_kl=0.01):
    run = root / "runs" / level / variant / f"seed{seed}"
    run.mkdir(parents=True)
    config = {"model": "tiny", "optim": {"lr": lr}, "eval": {"num_problems": problems},
              "warm_start": {"cache_dir": f"/x/warm_starts/g{group}"}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": 0, "eval/accuracy": accuracies[0]}]
    rows += [{"step": 20 * k, "time/step_s": 1.0, "eval/accuracy": a, "ppo_kl": ppo_kl} for k, a in enumerate(accuracies[1:], 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "final_metrics.json").write_text("{}")


def _phases_layout(out):
    """Tuning: grpo best at 1e-4, sspo at 3e-4 (AUC); main: L0 and L3, two seeds."""
    for variant, lr, acc in (("grpo@lr0.0001", 1e-4, 0.40), ("grpo@lr0.0003", 3e-4, 0.35),
                             ("sspo@lr0.0001", 1e-4, 0.36), ("sspo@lr0.0003", 3e-4, 0.42)):  # fmt: skip
        for seed in (1000, 1001):
            _run(out / "tune", "L3", variant, seed, [0.3, acc], lr=lr, group=seed % 2)
    finals = {("L0", "grpo"): (0.40, 0.36), ("L0", "sspo"): (0.38, 0.36), ("L3", "grpo"): (0.30, 0.34),
              ("L3", "sspo"): (0.36, 0.38)}  # fmt: skip
    for (level, method), (a, b) in finals.items():
        lr = 1e-4 if method == "grpo" else 3e-4
        kl = 0.01 if level == "L0" else 0.04
        _run(out / "main", level, method, 0, [0.3, 0.33, a], lr=lr, ppo_kl=kl * (1.0 if method == "grpo" else 1.5))
        _run(out / "main", level, method, 1, [0.32, 0.3, b], lr=lr, group=1, ppo_kl=kl * 1.2)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_of_the_phases_carries_lr_evaluation_size_and_the_lr_choice(tmp_path):
    _phases_layout(tmp_path)
    result = write_report(tmp_path)
    tuning = _read(tmp_path / "stress_lr.csv")
    assert len(tuning) == 8 and {r["method"] for r in tuning} == {"grpo", "sspo"}
    assert {(r["variant"], float(r["lr"])) for r in tuning} >= {("sspo@lr0.0003", 3e-4), ("grpo@lr0.0001", 1e-4)}
    cells = {(r["phase"], r["level"], r["method"]): r for r in _read(tmp_path / "stress.csv")}
    assert set(cells) == {("main", lvl, m) for lvl in ("L0", "L3") for m in ("grpo", "sspo")}
    l3 = cells[("main", "L3", "sspo")]
    assert float(l3["lr"]) == 3e-4 and float(l3["eval_problems"]) == 500 and l3["seeds"] == "2"
    assert float(l3["d_acc_final_vs_grpo"]) == pytest.approx(0.05)  # (0.06 + 0.04) / 2
    assert float(l3["dd_acc_final_mean"]) == pytest.approx(0.06)  # (0.06 − (−0.02) + 0.04 − 0.00) / 2
    runs = _read(tmp_path / "stress_runs.csv")
    assert len(runs) == 8 and {r["phase"] for r in runs} == {"main"}
    assert {(r["seed"], r["warm_start_group"]) for r in runs} == {("0", "0"), ("1", "1")}
    assert runs[0]["curve"].startswith("0:0.3000;20:")
    text = (tmp_path / "stress.md").read_text()
    assert "| grpo | 0.350 (2) | 0.325 (2) | 0.0001 |" in text  # mean AUC at 1e-4 and 3e-4; the chosen lr
    assert "| sspo | 0.330 (2) | 0.360 (2) | 0.0003 |" in text
    assert "accuracy 0.310 has a binomial standard error of 2.1 points" in text  # √(0.31·0.69/500)
    assert "Final accuracy at matched drift (ppo_kl)" in text and "no difference was detected" in text
    assert result["frontier"]["grpo"]["mean"] is not None
    html = (tmp_path / "report.html").read_text()
    assert "Accuracy vs measured drift" in html and "Learning rates" in html


def test_committed_records_join_the_report_and_are_not_run_again(tmp_path):
    _phases_layout(tmp_path / "first")
    write_report(tmp_path / "first")
    records = tmp_path / "records"
    records.mkdir()
    for name in ("stress_lr.csv", "stress_runs.csv"):
        (records / name).write_bytes((tmp_path / "first" / name).read_bytes())
    again = write_report(tmp_path / "fresh", records=records)  # no run directories at all
    first = _read(tmp_path / "first" / "stress.csv")
    assert _read(tmp_path / "fresh" / "stress.csv") == first
    assert len(again["phases"]["tune"]) == 8
    assert recorded_runs(records, "main") == {(lvl, m, s) for lvl in ("L0", "L3") for m in ("grpo", "sspo") for s in (0, 1)}
    assert ("L3", "sspo@lr0.0003", 1001) in recorded_runs(records, "tune")
    old = tmp_path / "v1"
    old.mkdir()
    (old / "stress_runs.csv").write_text("level,method,seed,acc_final\nL0,grpo,0,0.4\n")  # the first ladder's file
    assert recorded_runs(old, "main") == set() and collect_phases(tmp_path / "none", old) == {}


def _tuning_csv(path, methods, *, missing=0, best=None, beyond=False):
    """Tuning runs of ``methods`` on the grid (AUC 0.5 at each one's ``best`` lr, default 1e-4, else 0.3);
    ``beyond``: also the runs past the edge for methods whose best is one (AUC 0.4)."""
    from sspo.experiments.stress.ladder import LR_BEYOND

    rows = []
    for m in methods:
        edge = LR_BEYOND.get((best or {}).get(m, 1e-4))
        for lr in (*TUNE.lrs, *((edge,) if beyond and edge else ())):
            for level in TUNE.levels:
                for seed in (1000, 1001):
                    score = 0.5 if lr == (best or {}).get(m, 1e-4) else 0.4 if lr == edge else 0.3
                    rows.append({"phase": "tune", "level": level, "method": m, "variant": f"{m}@lr{lr:g}",
                                 "seed": seed, "lr": lr, "auc": score, "acc_final": score})  # fmt: skip
    rows = rows[: len(rows) - missing]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _args(**kw):
    base = {"lr_from": None, "records": None, "workers": 1, "overrides": [], "objectives": None}
    return argparse.Namespace(**{**base, **kw})


def test_the_main_phase_waits_for_a_complete_grid_then_runs_each_method_at_its_lr(tmp_path):
    incomplete = _tuning_csv(tmp_path / "part.csv", MAIN_METHODS, missing=1)
    assert chosen_lrs(tmp_path, lr_from=str(incomplete)) is None
    small = dataclasses.replace(MAIN, levels=("L0",), seeds=1, headline_seeds=0)
    cache = f"warm_start.cache_dir={tmp_path / 'cache'}"
    plan, why = phase_plan(tmp_path, "main", small, _args(lr_from=str(incomplete), overrides=[cache]))
    assert plan is None and "waits for the tuning phase" in why
    edges = _tuning_csv(tmp_path / "edges.csv", MAIN_METHODS, best={"sspo": 3e-4, "vespo": 3e-5})
    assert chosen_lrs(tmp_path, lr_from=str(edges)) is None  # best at an edge: waits for the point past it
    full = _tuning_csv(tmp_path / "lr.csv", MAIN_METHODS, best={"sspo": 3e-4, "vespo": 3e-5}, beyond=True)
    choice = chosen_lrs(tmp_path, lr_from=str(full))
    assert choice["sspo"]["lr"] == 3e-4 and choice["vespo"]["lr"] == 3e-5 and choice["grpo"]["lr"] == 1e-4
    plan, summary = phase_plan(tmp_path, "main", small, _args(lr_from=str(full), overrides=[cache]))
    lrs = {job.method: job.config["optim"]["lr"] for job in plan.runs}
    assert lrs["sspo"] == 3e-4 and lrs["vespo"] == 3e-5 and lrs["grpo"] == 1e-4 and len(lrs) == len(MAIN_METHODS)
    assert "sspo 0.0003" in summary
    common = Ladder(levels=("L3",), objectives=MAIN_METHODS, seeds=1)
    plan, _ = phase_plan(tmp_path, "common-lr", common, _args(lr_from=str(full), overrides=[cache]))
    assert {job.method for job in plan.runs} == {"grpo", "sspo", "vespo"}  # the others' main runs serve
    assert {job.config["optim"]["lr"] for job in plan.runs} == {1e-4}


def test_tuning_on_an_evaluation_seed_is_refused(tmp_path):
    path = _tuning_csv(tmp_path / "lr.csv", ("grpo", *TUNE.objectives[1:]))
    text = path.read_text().replace(",1000,", ",3,")
    path.write_text(text)
    with pytest.raises(ValueError, match="uses seed 3, an evaluation seed"):
        chosen_lrs(tmp_path, lr_from=str(path))


def _fake_spawn(events):
    def spawn(job, payload, log_path):
        events.append(job.name)
        job.result_file.parent.mkdir(parents=True, exist_ok=True)
        result = {"train": {"accuracy_before": 0.1, "accuracy_after": 0.2, "steps": 3, "train_seconds": 7.0,
                            "wall_seconds": 9.0}, "warm_start": {"steps": 1, "seconds": 0.0}}[job.kind]  # fmt: skip
        job.result_file.write_text(json.dumps(result))
        return 0

    return spawn


def test_runs_start_in_the_plans_order_headline_first_and_a_chunk_limit_stops_dispatch(tmp_path, monkeypatch):
    from sspo.experiments import runner
    from sspo.experiments.stress.ladder import build_plan

    ladder = Ladder(levels=("L0", "L1", "L3"), objectives=("grpo", "sspo"), seeds=2, headline_levels=("L3",),
                    headline_seeds=3, warm_starts=2)  # fmt: skip
    cache = f"warm_start.cache_dir={tmp_path / 'cache'}"
    plan = build_plan(tmp_path / "out", ladder, workers=1, overrides=[cache])
    assert [j.name for j in plan.runs[:6]] == [f"L3/{m}/seed{s}" for s in range(3) for m in ("grpo", "sspo")]
    stopped = build_plan(tmp_path / "stopped", ladder, workers=1, overrides=[cache])
    events: list[str] = []
    monkeypatch.setattr(runner, "_spawn", _fake_spawn(events))
    warm_of = {id(j.config): j for j in plan.warm_starts + stopped.warm_starts}  # one worker: built in this process
    monkeypatch.setattr(runner, "run_job", lambda payload: _fake_spawn(events)(warm_of[id(payload["config"])], payload, None))
    runner.execute_plan(stopped, echo=False, stop_after_s=0.0)
    assert [e for e in events if not e.startswith("warm start")] == []  # no run started
    assert "chunk limit of 0 min reached" in (tmp_path / "stopped" / "stress.log").read_text()
    assert runner.execute_plan(plan, echo=False) == []
    trained = [e for e in events if not e.startswith("warm start")]
    assert trained == [j.name for j in plan.runs]  # the plan's order, not sorted by seed


def test_a_best_lr_at_the_grids_edge_runs_one_point_past_it_before_the_choice(tmp_path):
    from sspo.experiments.stress.phases import beyond_the_edge, tuning_extension

    tune = dataclasses.replace(TUNE, objectives=("grpo", "sspo", "vespo"))
    grid = _tuning_csv(tmp_path / "grid.csv", tune.objectives, best={"grpo": 1e-4, "sspo": 3e-5, "vespo": 3e-4})
    assert chosen_lrs(tmp_path, tune, lr_from=str(grid)) is None  # sspo and vespo wait for 1e-5 and 1e-3
    rows = _read(grid)
    choice = {m: {"lr": lr} for m, lr in (("grpo", 1e-4), ("sspo", 3e-5), ("vespo", 3e-4))}
    assert beyond_the_edge(choice, tune) == {1e-5: ("sspo",), 1e-3: ("vespo",)}
    args = _args(lr_from=str(grid))
    first = tuning_extension(tmp_path, tune, args)
    assert first.lrs == (1e-5,) and first.objectives == ("grpo", "sspo")  # the plan needs the baseline
    extra = [{**rows[0], "method": "sspo", "variant": f"sspo@lr{lr:g}", "level": level, "seed": seed, "lr": lr,
              "auc": auc} for lr, auc in ((1e-5, 0.45), (1e-3, 0.2)) for level in TUNE.levels for seed in (1000, 1001)]
    extra += [{**r, "method": "vespo", "variant": "vespo@lr0.001", "lr": 1e-3, "auc": 0.6} for r in extra[4:]]
    extra += [{**r, "method": "grpo", "variant": "grpo@lr1e-05", "auc": 0.9} for r in extra[:4]]
    with open(grid, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerows(extra)
    assert tuning_extension(tmp_path, tune, args) is None
    choice = chosen_lrs(tmp_path, tune, lr_from=str(grid))
    assert choice["sspo"]["lr"] == 3e-5 and choice["sspo"]["scores"][1e-5] == pytest.approx(0.45)  # 0.5 > 0.45
    assert choice["vespo"]["lr"] == 1e-3  # past the edge, better: chosen
    assert choice["grpo"]["lr"] == 1e-4 and 1e-5 not in choice["grpo"]["scores"]  # not at an edge: grid only
    assert 1e-3 not in choice["sspo"]["scores"]  # sspo was at the lower edge only


def test_a_committed_csv_reads_back_and_writes_unchanged(tmp_path):
    """Integers stay integers (``500``, not ``500.0``), so re-reporting does not rewrite committed rows."""
    from sspo.experiments.reporting import write_csv
    from sspo.experiments.stress.phases import read_csv_records

    text = "phase,level,method,seed,eval_problems,lr,acc_final,note\nmain,L0,grpo,3,500,3e-05,0.452,\n"
    src = tmp_path / "a.csv"
    src.write_text(text)
    rows = read_csv_records(src)
    assert rows[0]["seed"] == 3 and rows[0]["eval_problems"] == 500 and isinstance(rows[0]["eval_problems"], int)
    assert rows[0]["lr"] == 3e-05 and rows[0]["acc_final"] == 0.452
    write_csv(tmp_path / "b.csv", rows)
    assert (tmp_path / "b.csv").read_text().replace("\r\n", "\n") == text
