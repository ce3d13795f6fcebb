"""Aggregation maths of ``sspo compare`` on hand-written numbers and fake run directories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from sspo.cli import main
from sspo.experiments.compare.aggregate import (
    count_spikes,
    group_stats,
    mean_ci,
    seconds_to_target,
    steps_to_target,
    summarise_run,
    t_quantile,
)
from sspo.experiments.compare.report import collect


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 1, 12.706204736), (0.975, 2, 4.302652730), (0.975, 4, 2.776445105), (0.975, 30, 2.042272456),
     (0.95, 10, 1.812461123), (0.025, 2, -4.302652730), (0.975, 1000, 1.962339081), (0.975, 120, 1.979930405)],
)  # fmt: skip
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-7)


def test_mean_ci_of_one_two_three():
    mean, half, n = mean_ci([1, 2, 3])
    assert (mean, n) == (2.0, 3)
    # s = 1, t_{0.975,2} = 4.302653 -> 4.302653 / sqrt(3)
    assert half == pytest.approx(2.484137712, abs=1e-8)


def test_mean_ci_drops_missing_and_handles_small_n():
    assert mean_ci([None, 5.0, math.nan])[0] == 5.0
    assert math.isnan(mean_ci([5.0])[1])
    mean, half, n = mean_ci([])
    assert n == 0 and math.isnan(mean) and math.isnan(half)
    mean, half, n = mean_ci([0.4, 0.4, 0.4, 0.4])
    assert (mean, half, n) == (pytest.approx(0.4), 0.0, 4)


def test_count_spikes_on_known_series():
    # window median 1.0, MAD 0.05 -> robust sd 0.0741; k=6 -> threshold 1.445
    base = [1.0, 1.05, 0.95, 1.0, 1.05, 0.95, 1.0]
    assert count_spikes(base) == 0
    assert count_spikes([*base, 1.4, 1.0]) == 0  # below the threshold
    assert count_spikes([*base, 1.5, 1.0, 3.0, 1.0], k=6.0) == 2
    assert count_spikes([*base, 1.5, 1.0, 3.0, 1.0], k=20.0) == 1  # threshold 1 + 20 * 0.0741 = 2.48
    # downward outliers count only two-sided; early points (< min_history) never count
    assert count_spikes([*base, -5.0]) == 0
    assert count_spikes([*base, -5.0], two_sided=True) == 1
    assert count_spikes([100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == 0
    assert count_spikes([1.0, 1.0, math.inf, None, 1.0]) == 1


def test_count_spikes_uses_the_trailing_window_only():
    # a slow upward drift is not a spike: the window follows the level
    drift = [1.0 + 0.1 * i for i in range(60)]
    assert count_spikes(drift, window=10, k=6.0) == 0
    # a constant series: any rise above the level (beyond 1e-8 relative) is a spike
    assert count_spikes([2.0] * 10 + [2.5]) == 1


def test_steps_and_seconds_to_target():
    rows = [
        {"step": 0, "eval/accuracy": 0.30},
        {"step": 5, "time/elapsed_s": 10.0, "eval/accuracy": 0.32},
        {"step": 10, "time/elapsed_s": 21.0, "eval/accuracy": 0.36},
        {"step": 12, "time/elapsed_s": 25.0},
        {"step": 12, "eval/accuracy": 0.34},
    ]
    points = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    assert steps_to_target(points, 0.35) == 10
    assert steps_to_target(points, 0.30) == 0
    assert steps_to_target(points, 0.5) is None
    assert seconds_to_target(rows, 0.35) == 21.0
    assert seconds_to_target(rows, 0.2) == 0.0


def _fake_rows(acc: list[tuple[int, float]], steps: int, grad_spike_at: int | None = None, seed: int = 0) -> list[dict]:
    rows = [{"step": 0, "eval/accuracy": acc[0][1]}]
    accs = dict(acc[1:])
    for step in range(1, steps + 1):
        row = {
            "step": step, "reward/mean": 0.3 + 0.01 * step, "entropy": 1.0 - 0.01 * step,
            "grad_norm": 50.0 if step == grad_spike_at else 1.0 + 0.01 * (step % 3),
            "loss": 0.01 * ((step + seed) % 2), "seq_weight/var": 0.001 * step, "seq_weight/ess": 1.0 - 0.001 * step,
            "gate/attenuated_frac": 0.1, "time/step_s": 2.0, "rollout/tokens": 100.0,
            "time/elapsed_s": 2.0 * step,
        }  # fmt: skip
        if step in accs and step != steps:
            row["eval/accuracy"] = accs[step]
        rows.append(row)
    rows.append({"step": steps, "eval/accuracy": acc[-1][1]})
    return rows


def test_summarise_run_values():
    rows = _fake_rows([(0, 0.30), (10, 0.40), (20, 0.38)], steps=20, grad_spike_at=15)
    final = {"accuracy_before": 0.30, "accuracy_after": 0.38, "steps": 20, "train_seconds": 40.0, "wall_seconds": 50.0}
    s = summarise_run(rows, final, target=0.35)
    assert s["acc_final"] == 0.38 and s["acc_best"] == 0.40 and s["acc_before"] == 0.30
    assert s["gain_vs_none"] == pytest.approx(0.08)
    assert s["steps_to_target"] == 10 and s["seconds_to_target"] == 20.0 and s["reached"] == 1.0
    assert s["entropy_start"] == pytest.approx(1.0 - 0.03)  # mean of steps 1..5
    assert s["entropy_end"] == pytest.approx(1.0 - 0.18)  # mean of steps 16..20
    assert s["grad_norm_max"] == 50.0 and s["grad_spikes"] == 1
    assert s["loss_spikes"] == 0  # alternating 0 / 0.01 is the level, not a spike
    assert s["seq_weight_var"] == pytest.approx(0.0105)
    assert s["ess_min"] == pytest.approx(0.98)
    assert s["restricted_frac"] == pytest.approx(0.1)
    assert s["tokens_per_s"] == pytest.approx(50.0)
    assert (s["steps"], s["train_seconds"]) == (20, 40.0)


def test_summarise_run_falls_back_to_clip_fraction():
    rows = [{"step": 0, "eval/accuracy": 0.5}] + [{"step": i, "pg_clipfrac": 0.2 * i} for i in (1, 2)]
    s = summarise_run(rows, {"accuracy_after": 0.5}, target=0.9)
    assert s["restricted_frac"] == pytest.approx(0.3)
    assert s["steps_to_target"] is None and s["reached"] == 0.0


def test_group_stats_names_and_values():
    stats = group_stats([{"a": 1.0}, {"a": 2.0}, {"a": 3.0, "b": 4.0}], ["a", "b"])
    assert stats["n_seeds"] == 3
    assert stats["a_mean"] == 2.0 and stats["a_ci95"] == pytest.approx(2.484137712)
    assert stats["b_mean"] == 4.0 and math.isnan(stats["b_ci95"])


def _write_run(out: Path, setting: str, method: str, seed: int, acc: list[tuple[int, float]], steps: int) -> None:
    run = out / "runs" / setting / method / f"seed{seed}"
    run.mkdir(parents=True)
    rows = _fake_rows(acc, steps, seed=seed)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = {"objective": method, "steps": steps, "accuracy_before": acc[0][1], "accuracy_after": acc[-1][1],
             "train_seconds": 2.0 * steps, "wall_seconds": 2.0 * steps + 5}  # fmt: skip
    (run / "final_metrics.json").write_text(json.dumps(final))


@pytest.fixture
def fake_compare(tmp_path):
    """Two methods x three seeds in one setting, and SFT controls for every seed."""
    before = {0: 0.30, 1: 0.32, 2: 0.34}
    for seed in range(3):
        b = before[seed]
        _write_run(tmp_path, "offpolicy", "sspo", seed, [(0, b), (10, b + 0.05), (20, b + 0.10 + 0.01 * seed)], 20)
        _write_run(tmp_path, "offpolicy", "grpo", seed, [(0, b), (10, b + 0.01), (20, b + 0.02)], 20)
        ctrl = tmp_path / "controls" / "sft" / f"seed{seed}"
        ctrl.mkdir(parents=True)
        (ctrl / "result.json").write_text(json.dumps({"accuracy": b + 0.03, "steps": 100, "seconds": 40.0}))
    return tmp_path


def test_collect_pairs_gains_with_the_same_seed(fake_compare):
    data = collect(fake_compare)
    assert data["target"] == pytest.approx(0.32 + 0.05)  # mean warm-start accuracy + 0.05
    assert data["no_training"] == {0: 0.30, 1: 0.32, 2: 0.34}
    sspo = sorted((r for r in data["records"] if r["method"] == "sspo"), key=lambda r: r["seed"])
    assert [r["gain_vs_none"] for r in sspo] == pytest.approx([0.10, 0.11, 0.12])
    assert [r["gain_vs_sft"] for r in sspo] == pytest.approx([0.07, 0.08, 0.09])


def test_report_only_tables(fake_compare, capsys):
    _write_run(fake_compare, "offpolicy", "sspo-gate-sigmoid", 0, [(0, 0.30), (10, 0.31), (20, 0.33)], 20)
    assert main(["compare", "--report-only", "--out", str(fake_compare), "--target-accuracy", "0.36"]) == 0
    assert "| offpolicy | sspo |" in capsys.readouterr().out
    with open(fake_compare / "results.csv") as f:
        rows = {(r["setting"], r["method"]): r for r in csv.DictReader(f)}
    assert list(rows) == [("offpolicy", "grpo"), ("offpolicy", "sspo"), ("offpolicy", "sspo-gate-sigmoid"),
                          ("control", "no-training"), ("control", "sft")]  # fmt: skip
    assert rows[("offpolicy", "sspo-gate-sigmoid")]["n_seeds"] == "1"
    sspo = rows[("offpolicy", "sspo")]
    assert float(sspo["acc_final_mean"]) == pytest.approx(0.43)  # 0.40, 0.43, 0.46
    assert float(sspo["acc_final_ci95"]) == pytest.approx(4.302652730 * 0.03 / math.sqrt(3), abs=1e-9)
    assert float(sspo["gain_vs_sft_mean"]) == pytest.approx(0.08)
    # target 0.36: seed 0 reaches it at step 10 (0.35 < 0.36 -> no: at step 20); seeds 1, 2 at step 10
    assert float(sspo["steps_to_target_mean"]) == pytest.approx((20 + 10 + 10) / 3)
    grpo = rows[("offpolicy", "grpo")]
    assert float(grpo["reached_mean"]) == pytest.approx(1 / 3)  # only seed 2 (0.36) reaches 0.36
    assert float(rows[("control", "sft")]["acc_final_mean"]) == pytest.approx(0.35)
    assert float(rows[("control", "no-training")]["acc_final_mean"]) == pytest.approx(0.32)
    with open(fake_compare / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 7
    md = (fake_compare / "results.md").read_text()
    assert "| offpolicy | sspo | 3 | 0.430 ± 0.075 |" in md
    page = (fake_compare / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 3  # accuracy bars, the setting's curves, ablations
    assert (fake_compare / "plots" / "curves_ablations.png").is_file()
    assert (fake_compare / "plots" / "curves_offpolicy.png").stat().st_size > 10_000
    assert "Target accuracy for “steps→target”:\n0.360" in page
