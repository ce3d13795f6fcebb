"""``sspo stress`` statistics on hand-computed inputs: the collapse rule, the noise floor and the minimal
detectable difference, the difference in differences, learning-rate selection and the drift-matched view."""

from __future__ import annotations

import math

import pytest

from sspo.experiments.stress.aggregate import (
    binomial_se,
    cell_table,
    collapse_flags,
    drift_bins,
    drift_matched,
    min_detectable_difference,
    select_lr,
    summarise_stress_run,
)

T975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{p,2} = (2p − 1)/√(2p(1 − p)) = 4.302653
T80_2 = 0.6 / math.sqrt(2 * 0.8 * 0.2)  # = 1.060660
T975_1 = math.tan(math.pi * 0.475)  # t_{p,1} = tan(π(p − ½)) = 12.706205


# ----------------------------------------------------------------------------- collapse
def test_collapse_needs_the_final_or_two_consecutive_evaluations_ten_points_down():
    assert collapse_flags(0.40, [0.45, 0.30]) == {"collapsed": 1.0, "dipped": 0.0}  # the final one
    assert collapse_flags(0.40, [0.25, 0.28, 0.40]) == {"collapsed": 1.0, "dipped": 0.0}  # two in a row
    assert collapse_flags(0.40, [0.29, 0.40, 0.41]) == {"collapsed": 0.0, "dipped": 1.0}  # one, recovered
    assert collapse_flags(0.40, [0.25, 0.40, 0.29, 0.42]) == {"collapsed": 0.0, "dipped": 1.0}  # not in a row
    assert collapse_flags(0.40, [0.31, 0.35, 0.50]) == {"collapsed": 0.0, "dipped": 0.0}  # 9 points: neither


def test_exactly_ten_points_counts_and_no_evaluation_is_nan():
    assert collapse_flags(0.35, [0.25]) == {"collapsed": 1.0, "dipped": 0.0}  # 0.35 − 0.10 in floats < 0.25
    assert collapse_flags(0.35, [0.25, 0.40]) == {"collapsed": 0.0, "dipped": 1.0}
    assert collapse_flags(0.35, [0.2501, 0.40]) == {"collapsed": 0.0, "dipped": 0.0}
    for flags in (collapse_flags(0.35, []), collapse_flags(math.nan, [0.1, 0.1])):
        assert math.isnan(flags["collapsed"]) and math.isnan(flags["dipped"])


def _rows(accuracies):
    rows = [{"step": 0, "eval/accuracy": accuracies[0]}]
    for step, acc in enumerate(accuracies[1:], start=1):
        rows.append({"step": step, "time/step_s": 1.0, "eval/accuracy": acc, "ppo_kl": 0.01})
    return rows


@pytest.mark.parametrize(
    ("accuracies", "collapsed", "dipped"),
    [
        ([0.35, 0.25, 0.40], 0.0, 1.0),  # one dip, recovered (the old rule called this a collapse)
        ([0.35, 0.24, 0.20, 0.40], 1.0, 0.0),  # two consecutive, then a recovery
        ([0.35, 0.40, 0.20], 1.0, 0.0),  # the final one
        ([0.35, 0.30, 0.36], 0.0, 0.0),
    ],
)
def test_a_run_summary_carries_collapsed_and_dipped(accuracies, collapsed, dipped):
    run = summarise_stress_run(_rows(accuracies))
    assert (run["collapsed"], run["dipped"]) == (collapsed, dipped)
    assert run["acc_start"] == 0.35 and run["acc_final"] == accuracies[-1]


def test_a_run_without_evaluations_after_the_start_has_nan_flags():
    run = summarise_stress_run(_rows([0.35]))
    assert math.isnan(run["collapsed"]) and math.isnan(run["dipped"])


# ----------------------------------------------------------------------------- noise floor
def test_binomial_standard_error():
    assert binomial_se(0.31, 500) == pytest.approx(0.02068, abs=5e-6)  # √(0.31·0.69/500) = 0.020683
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.0, 10) == 0.0
    assert math.isnan(binomial_se(0.5, 0)) and math.isnan(binomial_se(1.5, 10))


def test_minimal_detectable_difference_of_a_paired_t_test():
    # n = 12: t_{0.975,11} = 2.200985, t_{0.8,11} = 0.875530 (mpmath on the t density)
    expected = (2.2009851600916 + 0.8755299780739) * 0.05 / math.sqrt(12)
    assert min_detectable_difference(0.05, 12) == pytest.approx(expected, rel=1e-9)
    assert min_detectable_difference(0.05, 12) == pytest.approx(0.044406, abs=1e-6)
    assert min_detectable_difference(0.1, 3) == pytest.approx((T975_2 + T80_2) * 0.1 / math.sqrt(3), rel=1e-9)
    assert min_detectable_difference(0.1, 3, power=0.5) == pytest.approx(T975_2 * 0.1 / math.sqrt(3), rel=1e-9)
    assert math.isnan(min_detectable_difference(0.05, 1)) and math.isnan(min_detectable_difference(math.nan, 12))


# ----------------------------------------------------------------------------- cells
def _record(level, method, seed, final, dipped=0.0):
    return {"level": level, "method": method, "seed": seed, "acc_start": 0.3, "acc_final": final,
            "acc_best": final, "auc": final, "gain": final - 0.3, "collapsed": 0.0, "dipped": dipped,
            "ppo_kl": 0.1, "restricted_frac": 0.0, "ess_min": 1.0, "nonfinite_updates": 0}  # fmt: skip


def _ladder_records():
    finals = {  # seed 3 lacks its L0 sspo run: the difference in differences leaves it out
        ("L0", "grpo"): [0.40, 0.42, 0.38, 0.41], ("L0", "sspo"): [0.45, 0.44, 0.47],
        ("L3", "grpo"): [0.20, 0.25, 0.22, 0.30], ("L3", "sspo"): [0.35, 0.30, 0.40, 0.10],
    }  # fmt: skip
    dipped = {("L3", "sspo"): [1.0, 0.0, 0.0, 1.0]}
    return [_record(lvl, method, seed, final, dipped.get((lvl, method), [0.0] * 4)[seed])
            for (lvl, method), values in finals.items() for seed, final in enumerate(values)]  # fmt: skip


def test_the_difference_in_differences_against_the_reference_level():
    table = {(r["level"], r["method"]): r for r in cell_table(_ladder_records(), level_order=["L0", "L3"])}
    l3 = table[("L3", "sspo")]
    # per seed (sspo − grpo at L3) − (sspo − grpo at L0): (0.15 − 0.05, 0.05 − 0.02, 0.18 − 0.09) = (0.10, 0.03, 0.09)
    mean = 0.22 / 3
    half = T975_2 * math.sqrt(43 / 30000) / math.sqrt(3)  # s² = ((8/3)² + (13/3)² + (5/3)²)/2 · 1e-4 = 43/30000
    assert l3["dd_acc_final_pairs"] == 3 and l3["d_acc_final_pairs"] == 4  # seed 3 is paired within L3
    assert l3["dd_acc_final_mean"] == pytest.approx(mean, rel=1e-9)
    assert l3["dd_acc_final_t_lo"] == pytest.approx(mean - half, rel=1e-9)
    assert l3["dd_acc_final_t_hi"] == pytest.approx(mean + half, rel=1e-9)
    assert l3["dip_rate"] == 0.5 and table[("L0", "sspo")]["dip_rate"] == 0.0
    for row in (table[("L0", "sspo")], table[("L0", "grpo")], table[("L3", "grpo")]):  # reference, baseline
        assert math.isnan(row["dd_acc_final_mean"]) and math.isnan(row["dd_acc_final_t_lo"])
        assert math.isnan(row["dd_acc_final_t_hi"]) and row["dd_acc_final_pairs"] == 0
    for reference in (None, "L9"):
        row = next(r for r in cell_table(_ladder_records(), reference_level=reference) if r["level"] == "L3"
                   and r["method"] == "sspo")  # fmt: skip
        assert math.isnan(row["dd_acc_final_mean"]) and row["dd_acc_final_pairs"] == 0


def test_cells_report_the_sd_of_the_paired_differences_and_the_minimal_detectable_difference():
    table = {(r["level"], r["method"]): r for r in cell_table(_ladder_records(), level_order=["L0", "L3"])}
    l0 = table[("L0", "sspo")]  # differences (0.05, 0.02, 0.09): s² = ((1/3)² + (10/3)² + (11/3)²)/2 · 1e-4
    sd = math.sqrt(37 / 30000)
    assert l0["d_acc_final_sd"] == pytest.approx(sd, rel=1e-9) and l0["d_auc_sd"] == pytest.approx(sd, rel=1e-9)
    assert l0["d_acc_final_mdd"] == pytest.approx((T975_2 + T80_2) * sd / math.sqrt(3), rel=1e-9)
    assert l0["d_auc_mdd"] == pytest.approx(l0["d_acc_final_mdd"], rel=1e-12)
    base = table[("L0", "grpo")]
    assert math.isnan(base["d_acc_final_sd"]) and math.isnan(base["d_acc_final_mdd"])


# ----------------------------------------------------------------------------- learning rate
def _tuning(method, lr, seed, auc, level="L0"):
    return {"method": method, "lr": lr, "seed": seed, "level": level, "auc": auc}


def test_select_lr_picks_the_best_mean_over_levels_and_tuning_seeds():
    records = [
        _tuning("sspo", 1e-5, 100, 0.30), _tuning("sspo", 1e-5, 101, 0.32, "L3"),
        _tuning("sspo", 1e-4, 100, 0.40), _tuning("sspo", 1e-4, 101, 0.36, "L3"), _tuning("sspo", 1e-4, 102, math.nan),
        _tuning("sspo", 3e-4, 100, 0.42), _tuning("sspo", 3e-4, 101, 0.38, "L3"),
    ]  # fmt: skip
    chosen = select_lr(records, evaluation_seeds=range(3))["sspo"]
    assert chosen["lr"] == 3e-4 and chosen["score"] == pytest.approx(0.40)
    assert chosen["scores"] == {1e-5: pytest.approx(0.31), 1e-4: pytest.approx(0.38), 3e-4: pytest.approx(0.40)}
    assert chosen["runs"] == {1e-5: 2, 1e-4: 2, 3e-4: 2}  # the NaN run is not counted


def test_select_lr_breaks_ties_towards_1e_4_then_the_smaller_rate():
    records = [_tuning("grpo", 3e-5, 100, 0.35), _tuning("grpo", 3e-4, 100, 0.3), _tuning("grpo", 3e-4, 101, 0.4),
               _tuning("grpo", 1e-4, 100, 0.34),  # 1e-4 itself scores lower: not chosen
               _tuning("cispo", 1e-5, 100, 0.2), _tuning("cispo", 1e-3, 100, 0.2)]  # fmt: skip
    chosen = select_lr(records, evaluation_seeds=[0, 1])
    assert chosen["grpo"]["lr"] == 3e-4  # |log10 3e-4 + 4| = 0.477 < |log10 3e-5 + 4| = 0.523; (0.3+0.4)/2 ties 0.35
    assert chosen["cispo"]["lr"] == 1e-5  # both one decade from 1e-4: the smaller


def test_select_lr_refuses_tuning_on_an_evaluation_seed():
    records = [_tuning("sspo", 1e-4, 100, 0.4), _tuning("sspo", 3e-4, 7, 0.5)]
    with pytest.raises(ValueError, match=r"'sspo'.*seed 7"):
        select_lr(records, evaluation_seeds={5, 6, 7})


# ----------------------------------------------------------------------------- drift
def _drift(method, kl, acc):
    return {"method": method, "ppo_kl": kl, "acc_final": acc}


def test_drift_matched_residuals_against_the_baselines_line():
    # the baseline on acc = 0.2 − 0.05·log10(kl); sspo 5 points above it at the same drifts; cispo around
    # it with a run at kl = 1 outside the baseline's range [1e-3, 1e-1]
    records = [_drift("grpo", 1e-3, 0.35), _drift("grpo", 1e-2, 0.30), _drift("grpo", 1e-1, 0.25),
               _drift("grpo", 0.0, 0.9), _drift("grpo", 1e-2, math.nan),  # no drift / no outcome: dropped
               _drift("sspo", 1e-3, 0.40), _drift("sspo", 1e-2, 0.35), _drift("sspo", 1e-1, 0.30),
               _drift("cispo", 1e-3, 0.36), _drift("cispo", 1e-2, 0.29), _drift("cispo", 1.0, 0.20)]  # fmt: skip
    rows = drift_matched(records)
    assert [r["method"] for r in rows] == ["grpo", "cispo", "sspo"]
    grpo, cispo, sspo = rows
    assert grpo["slope"] == pytest.approx(-0.05) and grpo["intercept"] == pytest.approx(0.2)
    assert grpo["n"] == 3 and grpo["residual_mean"] == pytest.approx(0.0, abs=1e-12) and grpo["inside"] == 1.0
    assert sspo["residual_mean"] == pytest.approx(0.05) and sspo["residual_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert sspo["drift_median"] == 1e-2 and sspo["inside"] == 1.0 and "slope" not in sspo
    assert cispo["residual_mean"] == pytest.approx(0.0, abs=1e-12)  # residuals (0.01, −0.01, 0)
    assert cispo["residual_ci95"] == pytest.approx(T975_2 * 0.01 / math.sqrt(3), rel=1e-6)
    assert cispo["inside"] == pytest.approx(2 / 3) and cispo["drift_median"] == 1e-2


def test_drift_matched_needs_three_baseline_runs():
    records = [_drift("grpo", 1e-3, 0.35), _drift("grpo", 1e-2, 0.30), _drift("grpo", math.nan, 0.3),
               _drift("sspo", 1e-3, 0.40), _drift("sspo", 1e-2, 0.35), _drift("sspo", 1e-1, 0.30)]  # fmt: skip
    assert drift_matched(records) == []


def test_drift_bins_at_quantiles_of_log_drift():
    # log10(kl) = −4, −3.5, −3, −2.5, −2, −1.5, −1.25, −1; edges at h = 7q: −4, −3.125, −2.25, −1.4375, −1
    logs = {"grpo": [(-4, 0.30), (-3.5, 0.34), (-3, 0.31), (-2, 0.29), (-1.25, 0.20)],
            "sspo": [(-2.5, 0.33), (-1.5, 0.32), (-1, 0.30)]}  # fmt: skip
    records = [_drift(m, 10.0**x, acc) for m, runs in logs.items() for x, acc in runs]
    records.append(_drift("sspo", 0.0, 0.5))  # no drift: dropped
    rows = drift_bins(records)
    assert [(r["bin"], r["method"]) for r in rows] == [(b, m) for b in range(4) for m in ("grpo", "sspo")]
    edges = [-4, -3.125, -2.25, -1.4375, -1]
    for r in rows:
        assert r["lo"] == pytest.approx(10.0 ** edges[r["bin"]], rel=1e-9)
        assert r["hi"] == pytest.approx(10.0 ** edges[r["bin"] + 1], rel=1e-9)
    assert [r["n"] for r in rows] == [2, 0, 1, 1, 1, 1, 1, 1]
    assert rows[0]["acc_final_mean"] == pytest.approx(0.32)
    assert rows[0]["acc_final_ci95"] == pytest.approx(T975_1 * 0.02, rel=1e-6)  # s = 0.02·√2, s/√2 = 0.02
    assert math.isnan(rows[1]["acc_final_mean"])
    assert [r["acc_final_mean"] for r in rows[2:]] == pytest.approx([0.31, 0.33, 0.29, 0.32, 0.20, 0.30])


def test_a_run_on_an_inner_edge_goes_up_and_the_top_edge_is_inclusive():
    records = [_drift("grpo", 10.0**x, 0.1 * i) for i, x in enumerate([-4, -3, -2, -1, 0])]  # edges = the runs
    rows = drift_bins(records, bins=4)
    assert [r["n"] for r in rows] == [1, 1, 1, 2]
    assert [r["acc_final_mean"] for r in rows] == pytest.approx([0.0, 0.1, 0.2, 0.35])
    assert rows[3]["hi"] == pytest.approx(1.0) and rows[1]["lo"] == pytest.approx(1e-3)
    assert drift_bins([_drift("grpo", math.nan, 0.3)]) == []
