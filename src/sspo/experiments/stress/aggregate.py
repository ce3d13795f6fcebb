"""The statistics of ``sspo stress``, as pure functions of runs' metric rows (no torch, no files).

Per run: final, best and start accuracy, the area under the accuracy curve, whether it collapsed, and
the drift it measured. Per cell (level × method, over seeds): means with Student-t 95 % CIs, the
collapse rate, and the **paired** difference to GRPO over the seeds both have (paired t and a paired
percentile bootstrap). Per method: the stability frontier along the ladder.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

from ..compare.aggregate import eval_points
from ..stats import finite, mean_ci, paired_bootstrap_ci, paired_diff

__all__ = ["COLLAPSE_DROP", "DRIFT", "cell_table", "frontier", "summarise_stress_run", "wilson_interval"]

COLLAPSE_DROP = 0.10
"""A seed collapsed when an evaluation falls this far (10 points) or more below its warm start."""

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
        "collapsed": float(any(acc <= start - COLLAPSE_DROP + 1e-12 for acc in after)) if after else math.nan,
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


def cell_table(records: Sequence[dict], *, baseline: str = "grpo", level_order: Sequence[str] = ()) -> list[dict]:
    """One row per (level, method): outcome means ± 95 % CI half-widths, collapse rate with its Wilson
    interval, drift means, and the paired difference to ``baseline`` in the same level (same seeds)."""
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
        table.append(row)
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
