"""Pure aggregation maths of ``sspo compare``: confidence intervals, spike counts, steps to a target,
and the per-run summary read from a run's ``metrics.jsonl`` rows and ``final_metrics.json``.

Nothing here touches torch or the file system; every function takes plain lists and dicts, so the
numbers in the report can be checked by hand (see ``docs/compare.md`` for the definitions).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ..stats import finite, mean_ci, t_quantile

__all__ = [
    "MAD_TO_SD",
    "RUN_METRICS",
    "count_spikes",
    "group_stats",
    "mean_ci",
    "seconds_to_target",
    "steps_to_target",
    "summarise_run",
    "t_quantile",
]

MAD_TO_SD = 1.4826
"""Scale that makes the median absolute deviation a consistent estimate of a normal's standard deviation."""
MEANAD_TO_SD = math.sqrt(math.pi / 2)
"""The same for the mean absolute deviation (1.2533)."""


# ----------------------------------------------------------------------------- spikes
def count_spikes(series: Sequence, *, window: int = 20, k: float = 6.0, min_history: int = 5,
                 two_sided: bool = False) -> int:  # fmt: skip
    """Points far above the recent typical level: ``x_i > med_i + k·σ_i``.

    Over the trailing window ``x_{i−window} … x_{i−1}`` with median ``med_i``:
    ``σ_i = max(1.4826·MAD_i, 1.2533·MeanAD_i, 1e-8·max(1, |med_i|))`` where ``MAD`` is the median
    and ``MeanAD`` the mean of ``|x − med_i|``. Both scales estimate a normal's standard deviation;
    the second keeps ``σ > 0`` when over half the window holds one value. Points before
    ``min_history`` values exist are never spikes. ``two_sided`` counts ``|x_i − med_i| > k·σ_i``
    instead (for a loss, whose sign carries no meaning). Non-finite points are spikes; ``None`` is
    skipped.
    """
    if window < 1 or min_history < 1:
        raise ValueError("window and min_history must be >= 1")
    history: list[float] = []
    spikes = 0
    for value in series:
        if value is None:
            continue
        x = float(value)
        if not math.isfinite(x):
            spikes += 1
            continue
        if len(history) >= min_history:
            recent = history[-window:]
            med = statistics.median(recent)
            deviations = [abs(v - med) for v in recent]
            sigma = max(MAD_TO_SD * statistics.median(deviations), MEANAD_TO_SD * statistics.fmean(deviations),
                        1e-8 * max(1.0, abs(med)))  # fmt: skip
            threshold = k * sigma
            deviation = abs(x - med) if two_sided else x - med
            if deviation > threshold:
                spikes += 1
        history.append(x)
    return spikes


# ----------------------------------------------------------------------------- targets
def eval_points(rows: Sequence[dict]) -> list[tuple[int, float]]:
    """``(step, eval/accuracy)`` of every evaluation row, in file order (step 0 is before training)."""
    return [(int(r["step"]), float(r["eval/accuracy"])) for r in rows if _number(r.get("eval/accuracy"))]


def steps_to_target(points: Sequence[tuple[int, float]], target: float) -> int | None:
    """First step whose held-out accuracy is ``>= target`` (0 if the start already is); ``None``: never."""
    for step, accuracy in points:
        if accuracy >= target:
            return step
    return None


def seconds_to_target(rows: Sequence[dict], target: float) -> float | None:
    """Training seconds (``time/elapsed_s`` of that step, 0 at step 0) until ``eval/accuracy >= target``."""
    elapsed = {0: 0.0}
    for r in rows:
        if _number(r.get("time/elapsed_s")):
            elapsed[int(r["step"])] = float(r["time/elapsed_s"])
    step = steps_to_target(eval_points(rows), target)
    return None if step is None else elapsed.get(step)


# ----------------------------------------------------------------------------- one run
RUN_METRICS: dict[str, str] = {
    "acc_final": "held-out greedy accuracy after training",
    "acc_best": "best held-out accuracy over the evaluations after step 0",
    "acc_before": "held-out accuracy of the warm start (step 0)",
    "gain_vs_none": "acc_final − acc_before (same run: the no-training control)",
    "gain_vs_sft": "acc_final − the SFT control's accuracy (same seed, same wall time)",
    "steps_to_target": "first evaluated step with accuracy ≥ target (runs that never reach it: excluded, see reached)",
    "seconds_to_target": "training seconds to that step",
    "reached": "fraction of seeds that reached the target",
    "entropy_start": "mean token entropy over the first 5 steps",
    "entropy_end": "mean token entropy over the last 5 steps",
    "grad_norm_max": "largest pre-clip gradient norm of any step",
    "grad_spikes": "grad-norm spikes (see count_spikes; a non-finite gradient is one)",
    "loss_spikes": "loss spikes, two-sided (see count_spikes; a non-finite loss is one)",
    "nonfinite_updates": "updates skipped because their loss or gradient was not finite",
    "seq_weight_var": "mean over steps of the variance of sequence weights",
    "seq_weight_ess": "mean over steps of the ESS (Σs)²/(G'·Σs²) of sequence weights",
    "ess_min": "smallest per-step ESS",
    "restricted_frac": "mean over steps of the fraction of tokens attenuated (h' < 0.5) or clipped",
    "steps": "training steps done",
    "train_seconds": "training seconds (rollouts, updates, periodic evals)",
    "wall_seconds": "wall seconds of the whole run (evals, export, plots included)",
    "tokens_per_s": "rollout tokens / (rollout + update seconds)",
}


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _column(rows: Sequence[dict], key: str) -> list[float]:
    """Per-training-step values of ``key`` (step ≥ 1, rows that hold it)."""
    return [float(r[key]) for r in rows if r.get("step", 0) >= 1 and _number(r.get(key))]


def _mean(xs: Sequence[float]) -> float:
    xs = finite(xs)
    return statistics.fmean(xs) if xs else math.nan


def summarise_run(rows: Sequence[dict], final: dict, *, target: float | None = None, spike_window: int = 20,
                  spike_k: float = 6.0) -> dict[str, float | None]:  # fmt: skip
    """The :data:`RUN_METRICS` of one run (``gain_vs_sft`` is filled in by the caller)."""
    points = eval_points(rows)
    after = [acc for step, acc in points if step > 0]
    attenuated = _column(rows, "gate/attenuated_frac")
    restricted = attenuated if attenuated else _column(rows, "pg_clipfrac")
    entropy = _column(rows, "entropy")
    grad = _column(rows, "grad_norm")
    ess = _column(rows, "seq_weight/ess")
    tokens, step_s = _column(rows, "rollout/tokens"), _column(rows, "time/step_s")
    before = final.get("accuracy_before")
    if before is None and points and points[0][0] == 0:
        before = points[0][1]
    acc_final = final.get("accuracy_after", after[-1] if after else math.nan)
    out: dict[str, float | None] = {
        "acc_final": acc_final,
        "acc_best": max(after) if after else math.nan,
        "acc_before": before if before is not None else math.nan,
        "gain_vs_none": acc_final - before if before is not None else math.nan,
        "gain_vs_sft": math.nan,
        "steps_to_target": None,
        "seconds_to_target": None,
        "reached": math.nan,
        "entropy_start": _mean(entropy[:5]),
        "entropy_end": _mean(entropy[-5:]),
        "grad_norm_max": max(grad) if grad else math.nan,
        "grad_spikes": count_spikes(grad, window=spike_window, k=spike_k),
        "loss_spikes": count_spikes(_column(rows, "loss"), window=spike_window, k=spike_k, two_sided=True),
        "nonfinite_updates": sum(_column(rows, "update/skipped_nonfinite")),
        "seq_weight_var": _mean(_column(rows, "seq_weight/var")),
        "seq_weight_ess": _mean(ess),
        "ess_min": min(ess) if ess else math.nan,
        "restricted_frac": _mean(restricted),
        "steps": final.get("steps", max((int(r["step"]) for r in rows), default=0)),
        "train_seconds": final.get("train_seconds", math.nan),
        "wall_seconds": final.get("wall_seconds", math.nan),
        "tokens_per_s": sum(tokens) / sum(step_s) if tokens and sum(step_s) > 0 else math.nan,
    }
    if target is not None:
        reached = steps_to_target(points, target)
        out["steps_to_target"] = reached
        out["seconds_to_target"] = seconds_to_target(rows, target)
        out["reached"] = 0.0 if reached is None else 1.0
    return out


def group_stats(records: Sequence[dict], keys: Sequence[str], level: float = 0.95) -> dict[str, float]:
    """``<key>_mean``, ``<key>_ci95`` (half-width) for each key over the records (seeds) of one group.

    Missing values (a seed that never reached the target) are left out of that key's mean; ``n_seeds``
    counts the records.
    """
    out: dict[str, float] = {"n_seeds": len(records)}
    for key in keys:
        mean, half, _ = mean_ci([r.get(key) for r in records], level)
        out[f"{key}_mean"] = mean
        out[f"{key}_ci95"] = half
    return out
