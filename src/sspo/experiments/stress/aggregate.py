"""The statistics of ``sspo stress``, as pure functions of runs' metric rows (no torch, no files).

Per run: final, best and start accuracy, the area under the accuracy curve, whether it collapsed (or
only dipped), and the drift it measured. Per cell (level × method, over seeds): means with Student-t 95 %
CIs, the collapse and dip rates, the **paired** difference to GRPO over the seeds both have (paired t, a
paired percentile bootstrap, and the minimal difference the pairs could detect), and the difference in
differences against a reference level. Per method: the stability frontier along the ladder. Around them:
the binomial noise floor of one evaluation, learning-rate selection on tuning seeds held apart from the
evaluation seeds, and a drift-matched comparison (outcomes against GRPO's outcome-vs-drift line, and
binned by drift).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from ..compare.aggregate import eval_points
from ..stats import finite, mean_ci, paired_bootstrap_ci, paired_diff, t_quantile

__all__ = [
    "COLLAPSE_DROP", "DRIFT", "binomial_se", "cell_table", "collapse_flags", "drift_bins", "drift_matched",
    "frontier", "min_detectable_difference", "select_lr", "summarise_stress_run", "wilson_interval",
]  # fmt: skip

COLLAPSE_DROP = 0.10
"""A seed collapsed when its final evaluation, or two consecutive evaluations after step 0, fall this far
(10 points) or more below its warm start; it only dipped when a single evaluation did and it recovered."""

_TOL = 1e-12
"""Tolerance of the comparisons (exactly 10 points below counts as below; equal scores tie)."""

DRIFT: dict[str, str] = {
    "ppo_kl": "ppo_kl",
    "abs_log_ratio_p50": "drift/abs_log_ratio_p50",
    "abs_log_ratio_p99": "drift/abs_log_ratio_p99",
    "seq_weight_ess": "seq_weight/ess",
    "effective_ratio": "update/effective_ratio",
    "staleness_mean": "async/staleness_mean",
    "staleness_max": "async/staleness_max",
}
"""Drift measures: the mean over a run's training steps of these logged metrics (the ``async/`` ones only
in runs with rollout workers; NaN elsewhere)."""

OUTCOMES = ("acc_final", "acc_best", "auc", "gain")


def _steps(rows: Sequence[dict], key: str) -> list[float]:
    return finite(r.get(key) for r in rows if r.get("step", 0) >= 1 and "time/step_s" in r)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def area_under_curve(points: Sequence[tuple[int, float]]) -> float:
    """Mean accuracy over training: the trapezoid area under ``(step, accuracy)`` divided by the steps
    it spans (the final evaluation shares the last step and replaces that step's value)."""
    by_step: dict[int, float] = {}
    for step, accuracy in points:
        by_step[step] = accuracy
    xs = sorted(by_step)
    if len(xs) < 2:
        return by_step[xs[0]] if xs else math.nan
    area = sum((xs[i + 1] - xs[i]) * (by_step[xs[i]] + by_step[xs[i + 1]]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def collapse_flags(start: float, after: Sequence[float]) -> dict[str, float]:
    """``collapsed`` and ``dipped`` (1.0/0.0) of a run starting at ``start`` with evaluations ``after``
    (after step 0, in order). An evaluation is *below* when ``acc ≤ start − COLLAPSE_DROP`` (± 1e-12).
    ``collapsed``: the final one is below, or two consecutive ones are; ``dipped``: some one is below but
    the run is not collapsed. Both NaN when ``after`` is empty or ``start`` is NaN."""
    if not after or not math.isfinite(start):
        return {"collapsed": math.nan, "dipped": math.nan}
    below = [acc <= start - COLLAPSE_DROP + _TOL for acc in after]
    collapsed = below[-1] or any(x and y for x, y in zip(below, below[1:]))
    return {"collapsed": float(collapsed), "dipped": float(any(below) and not collapsed)}


def summarise_stress_run(rows: Sequence[dict]) -> dict[str, float]:
    """One run's outcomes and measured drift from its ``metrics.jsonl`` rows."""
    points = eval_points(rows)
    start = points[0][1] if points and points[0][0] == 0 else math.nan
    after = [acc for step, acc in points if step > 0]
    restricted = _steps(rows, "gate/attenuated_frac") or _steps(rows, "pg_clipfrac")
    out = {
        "acc_start": start,
        "acc_final": after[-1] if after else math.nan,
        "acc_best": max(after) if after else math.nan,
        "auc": area_under_curve(points),
        **collapse_flags(start, after),
        "restricted_frac": _mean(restricted),
        "ess_min": min(_steps(rows, "seq_weight/ess"), default=math.nan),
        "nonfinite_updates": sum(_steps(rows, "update/skipped_nonfinite")),
        "steps": max((int(r["step"]) for r in rows), default=0),
    }
    out["gain"] = out["acc_final"] - start
    out.update({name: _mean(_steps(rows, key)) for name, key in DRIFT.items()})
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sensible at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_se(p: float, n: int) -> float:
    """Standard error ``√(p(1−p)/n)`` of an accuracy ``p`` measured on ``n`` problems: the noise floor of
    one evaluation (NaN when ``n < 1`` or ``p`` is not in [0, 1])."""
    if n < 1 or not 0.0 <= p <= 1.0:
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference a two-sided paired t-test at level ``alpha`` detects with
    probability ``power`` from ``n`` pairs whose differences have SD ``sd``:
    ``(t_{1−α/2, n−1} + t_{power, n−1}) · sd / √n`` (NaN when ``n < 2`` or ``sd`` is not finite)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def _finite_diffs(a: Sequence, b: Sequence) -> list[float]:
    """``a_k − b_k`` over the pairs where both are finite (the differences paired_diff averages)."""
    return [x - y for x, y in zip(a, b) if finite([x]) and finite([y])]


def cell_table(records: Sequence[dict], *, baseline: str = "grpo", level_order: Sequence[str] = (),
               reference_level: str | None = "L0") -> list[dict]:  # fmt: skip
    """One row per (level, method): outcome means ± 95 % CI half-widths, collapse and dip rates (the
    collapse rate with its Wilson interval), drift means, and the paired difference to ``baseline`` in
    the same level (same seeds): mean ``d̄`` with paired-t and bootstrap CIs, the SD ``s_d`` of the
    per-seed differences and the minimal detectable difference from ``s_d`` and the number of pairs
    (NaN on the baseline's rows). ``dd_acc_final_*``: the difference in differences
    ``(x_method,level − x_base,level) − (x_method,ref − x_base,ref)`` per seed present in all four cells,
    its mean and paired-t 95 % CI (NaN and 0 pairs on the baseline, at ``reference_level``, and
    without it)."""
    cells: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in records:
        cells[(r["level"], r["method"])][r["seed"]] = r
    rank = {name: i for i, name in enumerate(level_order)}
    table = []
    for (lvl, method) in sorted(cells, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1] != baseline, k[1])):
        runs = cells[(lvl, method)]
        seeds = sorted(runs)
        row: dict[str, object] = {"level": lvl, "method": method, "seeds": len(seeds)}
        for key in (*OUTCOMES, "acc_start"):
            mean, half, _ = mean_ci([runs[s][key] for s in seeds])
            row[f"{key}_mean"], row[f"{key}_ci95"] = mean, half
        collapsed = [runs[s]["collapsed"] for s in seeds if finite([runs[s]["collapsed"]])]
        row["collapse_rate"] = _mean(collapsed)
        row["collapse_lo"], row["collapse_hi"] = wilson_interval(int(sum(collapsed)), len(collapsed))
        row["dip_rate"] = _mean(finite(runs[s].get("dipped", math.nan) for s in seeds))  # older runs lack it
        for key in (*DRIFT, "restricted_frac", "ess_min", "nonfinite_updates"):
            row[key] = _mean(finite(runs[s].get(key, math.nan) for s in seeds))  # runs before a measure existed lack it
        base = cells.get((lvl, baseline), {})
        common = [s for s in seeds if s in base]
        for key in ("acc_final", "auc"):
            a, b = [runs[s][key] for s in common], [base[s][key] for s in common]
            diff = paired_diff(a, b)
            lo, hi = paired_bootstrap_ci(a, b)
            row.update({f"d_{key}_vs_{baseline}": diff["mean"], f"d_{key}_t_lo": diff["lo"],
                        f"d_{key}_t_hi": diff["hi"], f"d_{key}_boot_lo": lo, f"d_{key}_boot_hi": hi,
                        f"d_{key}_pairs": diff["n"]})  # fmt: skip
            d = _finite_diffs(a, b) if method != baseline else []  # the baseline against itself: NaN
            sd = statistics.stdev(d) if len(d) >= 2 else math.nan
            row[f"d_{key}_sd"], row[f"d_{key}_mdd"] = sd, min_detectable_difference(sd, len(d))
        row.update(_diff_in_diff(cells, lvl, method, baseline, reference_level, "acc_final"))
        table.append(row)
    return table


def _diff_in_diff(cells: dict[tuple[str, str], dict[int, dict]], lvl: str, method: str, baseline: str,
                  ref: str | None, key: str) -> dict[str, float]:  # fmt: skip
    """``dd_{key}_mean/_t_lo/_t_hi/_pairs`` of one cell against the reference level (see cell_table)."""
    four = [cells.get((lvl, method), {}), cells.get((lvl, baseline), {}),
            cells.get((ref, method), {}), cells.get((ref, baseline), {})]  # fmt: skip
    if method == baseline or ref is None or lvl == ref or not all(four):
        return {f"dd_{key}_mean": math.nan, f"dd_{key}_t_lo": math.nan, f"dd_{key}_t_hi": math.nan,
                f"dd_{key}_pairs": 0}  # fmt: skip
    m_lvl, b_lvl, m_ref, b_ref = four
    seeds = sorted(set(m_lvl).intersection(b_lvl, m_ref, b_ref))
    here = [m_lvl[s][key] - b_lvl[s][key] for s in seeds]
    there = [m_ref[s][key] - b_ref[s][key] for s in seeds]
    diff = paired_diff(here, there)  # NaN differences drop their seed
    return {f"dd_{key}_mean": diff["mean"], f"dd_{key}_t_lo": diff["lo"], f"dd_{key}_t_hi": diff["hi"],
            f"dd_{key}_pairs": diff["n"]}  # fmt: skip


def select_lr(tuning_records: Sequence[dict], evaluation_seeds: Iterable[int],
              metric: str = "auc") -> dict[str, dict]:  # fmt: skip
    """Per method, the learning rate with the highest mean ``metric`` over its tuning runs (every level
    and tuning seed together, non-finite values dropped); ties (within 1e-12) go to the rate closest to
    1e-4 in ``|log10 lr + 4|``, then to the smaller rate. Raises ``ValueError`` if a tuning run uses an
    evaluation seed: the rate must be chosen on seeds the reported comparison does not see.

    Returns ``{method: {"lr": chosen (None if no finite score), "score": its mean, "scores": {lr: mean},
    "runs": {lr: finite runs}}}``."""
    held_apart = set(evaluation_seeds)
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in tuning_records:
        if r["seed"] in held_apart:
            raise ValueError(f"tuning run of method {r['method']!r} (lr={r['lr']}) uses seed {r['seed']}, an "
                             f"evaluation seed: tune on seeds held apart from the evaluation")  # fmt: skip
        values[r["method"]][float(r["lr"])] += finite([r.get(metric)])
    result = {}
    for method in sorted(values):
        scores = {lr: _mean(xs) for lr, xs in sorted(values[method].items())}
        scored = {lr: v for lr, v in scores.items() if math.isfinite(v)}
        best = max(scored.values(), default=math.nan)
        tied = [lr for lr, v in scored.items() if v >= best - _TOL]
        chosen = min(tied, key=_lr_tiebreak, default=None)
        result[method] = {"lr": chosen, "score": best, "scores": scores,
                          "runs": {lr: len(xs) for lr, xs in sorted(values[method].items())}}  # fmt: skip
    return result


def _lr_tiebreak(lr: float) -> tuple[float, float]:
    """Among tied learning rates: the closest to 1e-4 in log space first, then the smaller."""
    return (abs(math.log10(lr) + 4.0) if lr > 0 else math.inf, lr)


def _drift_runs(records: Sequence[dict], key: str, outcome: str) -> list[tuple[str, float, float]]:
    """``(method, key, outcome)`` of the runs with a finite, positive ``key`` (the outcome may be NaN)."""
    runs = []
    for r in records:
        x, y = r.get(key), r.get(outcome)
        if finite([x]) and x > 0:
            runs.append((r["method"], float(x), float(y) if finite([y]) else math.nan))
    return runs


def drift_matched(records: Sequence[dict], *, baseline: str = "grpo", key: str = "ppo_kl",
                  outcome: str = "acc_final") -> list[dict]:  # fmt: skip
    """Outcomes at matched drift: the least-squares line ``outcome ≈ a + b·log10(key)`` over the
    ``baseline``'s runs with a finite, positive ``key`` and a finite outcome (≥ 3 runs, at two drifts at
    least, else ``[]``): ``b = Σ(x−x̄)(y−ȳ)/Σ(x−x̄)²``, ``a = ȳ − b·x̄``, ``x = log10(key)``. Per method
    (the baseline first, then by name), over such runs: ``n``, ``drift_median`` (of ``key``), the mean
    residual ``outcome − (a + b·x)`` with its Student-t 95 % CI half-width (``residual_mean``,
    ``residual_ci95``), and ``inside``, the fraction of its runs whose ``x`` lies in the baseline's
    observed range (the rest read the line by extrapolation). The baseline's row adds ``slope`` and
    ``intercept``."""
    runs = [(m, math.log10(k), k, y) for m, k, y in _drift_runs(records, key, outcome) if math.isfinite(y)]
    base = [(x, y) for m, x, _, y in runs if m == baseline]
    if len(base) < 3:
        return []
    x_bar, y_bar = statistics.fmean(x for x, _ in base), statistics.fmean(y for _, y in base)
    sxx = sum((x - x_bar) ** 2 for x, _ in base)
    if sxx <= 0:  # every baseline run at one drift: no slope
        return []
    slope = sum((x - x_bar) * (y - y_bar) for x, y in base) / sxx
    intercept = y_bar - slope * x_bar
    x_lo, x_hi = min(x for x, _ in base), max(x for x, _ in base)
    table = []
    for method in sorted({m for m, *_ in runs}, key=lambda m: (m != baseline, m)):
        mine = [(x, k, y) for m, x, k, y in runs if m == method]
        mean, half, n = mean_ci([y - (intercept + slope * x) for x, _, y in mine])
        row: dict[str, object] = {
            "method": method, "n": n, "drift_median": statistics.median(k for _, k, _ in mine),
            "residual_mean": mean, "residual_ci95": half,
            "inside": _mean([float(x_lo - _TOL <= x <= x_hi + _TOL) for x, _, _ in mine]),
        }  # fmt: skip
        if method == baseline:
            row.update({"slope": slope, "intercept": intercept})
        table.append(row)
    return table


def _quantile(xs: Sequence[float], q: float) -> float:
    """Quantile ``q`` of sorted ``xs`` by linear interpolation: ``x_i + (h − i)(x_{i+1} − x_i)``,
    ``h = (n − 1)q``, ``i = ⌊h⌋`` (NumPy's default)."""
    h = (len(xs) - 1) * q
    i = min(math.floor(h), len(xs) - 1)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (h - i) * (xs[i + 1] - xs[i])


def drift_bins(records: Sequence[dict], *, key: str = "ppo_kl", outcome: str = "acc_final",
               bins: int = 4) -> list[dict]:  # fmt: skip
    """Outcome by drift bin. Edges: the quantiles ``0, 1/bins, …, 1`` of ``log10(key)`` over every run
    with a finite, positive ``key``; a run on an inner edge goes to the upper bin, the top edge is
    inclusive. One row per (bin, method), bins in order and methods by name: ``bin``, ``lo``/``hi`` (the
    edges in ``key``'s units), ``method``, ``n`` (its runs there with a finite outcome) and
    ``{outcome}_mean`` with its Student-t 95 % CI half-width ``{outcome}_ci95``. ``[]`` without runs."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    runs = [(m, math.log10(k), y) for m, k, y in _drift_runs(records, key, outcome)]
    if not runs:
        return []
    xs = sorted(x for _, x, _ in runs)
    edges = [_quantile(xs, i / bins) for i in range(bins + 1)]
    members: dict[tuple[int, str], list[float]] = defaultdict(list)
    for method, x, y in runs:
        members[(min(bisect.bisect_right(edges, x) - 1, bins - 1), method)].append(y)
    table = []
    for i in range(bins):
        for method in sorted({m for m, _, _ in runs}):
            mean, half, n = mean_ci(members[(i, method)])
            table.append({"bin": i, "lo": 10.0 ** edges[i], "hi": 10.0 ** edges[i + 1], "method": method,
                          "n": n, f"{outcome}_mean": mean, f"{outcome}_ci95": half})  # fmt: skip
    return table


def frontier(table: Sequence[dict], ladder: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """Per method, the highest level of ``ladder`` (in order) up to which, at every level, its mean
    final accuracy is at or above its warm start (``mean``); the same read on the 95 % CI of the gain
    ``final − start``: ``certain`` (the CI's lower bound ≥ 0) and ``possible`` (its upper bound ≥ 0).
    ``None``: not even the first level."""
    by_method: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in table:
        by_method[row["method"]][row["level"]] = row
    result = {}
    for method, rows in by_method.items():
        levels = [lvl for lvl in ladder if lvl in rows]
        if not levels:
            continue
        found: dict[str, str | None] = {}
        for name, ok in (
            ("mean", lambda r: r["gain_mean"] >= 0),
            ("certain", lambda r: r["gain_mean"] - _half(r) >= 0),
            ("possible", lambda r: r["gain_mean"] + _half(r) >= 0),
        ):
            last = None
            for lvl in levels:
                if not ok(rows[lvl]):
                    break
                last = lvl
            found[name] = last
        result[method] = found
    return result


def _half(row: dict) -> float:
    half = row.get("gain_ci95", math.nan)
    return half if isinstance(half, float) and math.isfinite(half) else math.inf
