"""Outputs of ``sspo stress``, all rebuilt from the run directories (``--report-only`` works while runs
go on) and from committed per-run CSVs (``--records``):

- ``stress.csv``: one row per phase × level × method (outcomes, drift, paired differences vs GRPO);
- ``stress_runs.csv``: one row per run outside the tuning phase (with its phase, lr, warm-start group,
  evaluation problems, model and accuracy curve); ``stress_lr.csv``: the tuning runs;
- ``stress.md``, PNG plots and a self-contained ``report.html``.
"""

from __future__ import annotations

import html
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ...trainer.metrics_log import read_jsonl
from ..compare.aggregate import eval_points
from ..reporting import HTML_STYLE, finished_runs, img_tag, write_csv
from .aggregate import (
    COLLAPSE_DROP,
    binomial_se,
    cell_table,
    drift_matched,
    frontier,
    select_lr,
    summarise_stress_run,
)
from .ladder import BASELINE, COMMON_LR_VALUE, LEVELS, parse_method
from .ladder import MAIN_METHODS as MAIN_OBJECTIVES

__all__ = ["PHASE_DIRS", "collect", "collect_phases", "markdown_table", "write_report"]

PHASE_DIRS = ("tune", "main", "common-lr", "scale")
"""The phases of the powered plan, each under ``--out/<phase>/`` (``--quick`` writes ``--out`` itself)."""
REFERENCE_LEVEL = "L0"
"""The level the differences in differences are taken against."""

STATS_NOTE = (
    "Each ± is the half-width of a Student-t 95 % confidence interval of the mean over n seeds "
    "(t_{0.975,n−1}·s/√n). Differences vs GRPO are paired per seed (same warm start, problems and first "
    "rollout). The paired-t 95 % CI is the primary interval; the paired percentile bootstrap (10,000 "
    "resamples) is secondary, and narrower than the t interval at small n. All comparisons within a level "
    "share that level's GRPO runs, so they are not independent of each other. MDD: the smallest true "
    "paired difference a two-sided paired t-test at 5 % detects with 80 % power, (t_{0.975,n−1} + "
    "t_{0.8,n−1})·s_d/√n from the SD s_d of the per-seed differences. DiD: the per-seed difference at a "
    f"level minus the same pair's difference at {REFERENCE_LEVEL} (mean and paired-t 95 % CI), so a gap "
    f"already present at {REFERENCE_LEVEL} is not read as an off-policy effect. An interval that includes "
    "zero means no difference was detected, not that there is none. "
    f"Collapse: the final evaluation, or two consecutive ones, ≥ {COLLAPSE_DROP:.0%} points below the warm "
    "start (Wilson 95 % interval); dip: a single evaluation that far down in a run that did not collapse."
)


def objective_order() -> list[str]:
    """Every objective a ladder can run (``--objectives``), in a stable order: the default ladder's
    :data:`MAIN_OBJECTIVES` first, then the rest of ``sspo.OBJECTIVES``. A method of this list is a plain
    objective; any other method is a sweep variant."""
    from ...objectives import OBJECTIVES

    return [*MAIN_OBJECTIVES, *(o for o in OBJECTIVES if o not in MAIN_OBJECTIVES)]


def ladder_order() -> list[str]:
    return [lv.name for lv in LEVELS]


def main_ladder(levels: Sequence[str]) -> list[str]:
    """The levels the frontier is read along (``L*``, in order), among ``levels``."""
    return [name for name in ladder_order() if name.startswith("L") and name in levels]


def _run_facts(run_dir: Path) -> dict:
    """What a run's ``config.yaml`` says about it: lr, evaluation problems, model, warm-start group."""
    import yaml

    from ...trainer.loop import CONFIG_FILE

    path = run_dir / CONFIG_FILE
    config = yaml.safe_load(path.read_text()) if path.is_file() else {}
    cache = str((config.get("warm_start") or {}).get("cache_dir") or "")
    group = re.search(r"warm_starts/g(\d+)", cache)
    return {"lr": float((config.get("optim") or {}).get("lr", math.nan)),
            "eval_problems": int((config.get("eval") or {}).get("num_problems", 0)) or math.nan,
            "model": str(config.get("model", "")), "warm_start_group": int(group.group(1)) if group else 0}  # fmt: skip


def _curve(rows: Sequence[dict]) -> str:
    """The held-out accuracy curve as ``step:accuracy`` pairs (``;``-separated), kept in the per-run CSV."""
    return ";".join(f"{step}:{acc:.4f}" for step, acc in eval_points(rows))


def parse_curve(text: str) -> tuple[list[float], list[float]]:
    """``(steps, accuracies)`` of a :func:`_curve` string."""
    pairs = [p.split(":") for p in str(text or "").split(";") if ":" in p]
    return [float(s) for s, _ in pairs], [float(a) for _, a in pairs]


def collect(out: str | Path, phase: str = "quick") -> dict:
    """Per-run records of every finished run under ``out``: ``level``, ``method`` (a tuning run's
    ``<method>@lr<lr>`` split into method and lr), ``variant`` (the run directory's name), ``seed``,
    ``phase``, the run's config facts, its outcomes and drift, and its ``curve``."""
    records = []
    for lvl, name, seed, run_dir in finished_runs(Path(out)):
        rows = read_jsonl(run_dir / "metrics.jsonl")
        method, _ = parse_method(name)
        records.append({"phase": phase, "level": lvl, "method": method, "variant": name, "seed": seed,
                        **_run_facts(run_dir), **summarise_stress_run(rows), "curve": _curve(rows)})  # fmt: skip
    return {"records": records}


def record_file(phase: str) -> str:
    """The committed per-run CSV a phase's records live in (``--records DIR/<this>``)."""
    return "stress_lr.csv" if phase == "tune" else "stress_runs.csv"


def committed_records(records_dir: str | Path | None, phase: str) -> list[dict]:
    """The rows of ``phase`` in the committed per-run CSVs under ``records_dir`` (files of the first
    ladder, without a ``phase`` column, hold none)."""
    from .phases import read_csv_records

    if records_dir is None:
        return []
    path = Path(records_dir) / record_file(phase)
    if not path.is_file():
        return []
    return [r for r in read_csv_records(path) if r.get("phase") == phase]


def collect_phases(out: str | Path, records_dir: str | Path | None = None,
                   only: Sequence[str] = PHASE_DIRS) -> dict[str, list[dict]]:  # fmt: skip
    """``{phase: records}`` under ``out``: the phases of the powered plan when any ran there (joined by
    the committed records of ``records_dir`` that the run directories do not hold), else ``{"quick": ...}``."""
    out = Path(out)
    if not any((out / p / "runs").is_dir() for p in PHASE_DIRS) and records_dir is None:
        return {"quick": collect(out, "quick")["records"]}
    found = {}
    for phase in only:
        records = collect(out / phase, phase)["records"]
        have = {(r["level"], r["variant"], r["seed"]) for r in records}
        records += [r for r in committed_records(records_dir, phase)
                    if (r["level"], r["variant"], r["seed"]) not in have]  # fmt: skip
        if records:
            found[phase] = records
    if not found and (out / "runs").is_dir():
        found["quick"] = collect(out, "quick")["records"]
    return found


# ----------------------------------------------------------------------------- tables
def _pm(row: dict, key: str, digits: int = 3) -> str:
    mean, half = row.get(f"{key}_mean", math.nan), row.get(f"{key}_ci95", math.nan)
    if not math.isfinite(mean):
        return ""
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


def _interval(row: dict, key: str) -> str:
    mean = row.get(f"d_{key}_vs_{BASELINE}", math.nan)
    if row["method"] == BASELINE or not math.isfinite(mean):
        return ""
    lo, hi = row[f"d_{key}_t_lo"], row[f"d_{key}_t_hi"]
    blo, bhi = row[f"d_{key}_boot_lo"], row[f"d_{key}_boot_hi"]
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ({blo:+.3f}, {bhi:+.3f})"


def _did(row: dict) -> str:
    mean = row.get("dd_acc_final_mean", math.nan)
    if not math.isfinite(mean):
        return ""
    return f"{mean:+.3f} [{row['dd_acc_final_t_lo']:+.3f}, {row['dd_acc_final_t_hi']:+.3f}]"


def _num(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else ""


def _lr(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) and math.isfinite(value) else ""


COLUMNS = (
    ("level", lambda r: r["level"]),
    ("method", lambda r: r["method"]),
    ("lr", lambda r: _lr(r.get("lr"))),
    ("n", lambda r: str(r["seeds"])),
    ("ppo_kl", lambda r: _num(r["ppo_kl"], 4)),
    ("|Δ| p50 / p99", lambda r: f"{_num(r['abs_log_ratio_p50'], 3)} / {_num(r['abs_log_ratio_p99'], 2)}"),
    ("ESS mean / min", lambda r: f"{_num(r['seq_weight_ess'], 3)} / {_num(r['ess_min'], 3)}"),
    ("atten./clipped", lambda r: _num(r["restricted_frac"], 3)),
    ("eff. ratio", lambda r: _num(r["effective_ratio"], 3)),
    ("staleness mean / max", lambda r: (f"{_num(r['staleness_mean'], 2)} / {_num(r['staleness_max'], 2)}"
                                         if math.isfinite(r.get("staleness_mean", math.nan)) else "")),
    ("start", lambda r: _pm(r, "acc_start")),
    ("final", lambda r: _pm(r, "acc_final")),
    ("AUC", lambda r: _pm(r, "auc")),
    ("collapse [Wilson]", lambda r: f"{_num(r['collapse_rate'], 2)} [{_num(r['collapse_lo'], 2)}, "
                                    f"{_num(r['collapse_hi'], 2)}]"),
    ("dip", lambda r: _num(r.get("dip_rate", math.nan), 2)),
    ("final − GRPO [paired t] (bootstrap)", lambda r: _interval(r, "acc_final")),
    ("MDD", lambda r: "" if r["method"] == BASELINE else _num(r.get("d_acc_final_mdd", math.nan), 3)),
    (f"DiD vs {REFERENCE_LEVEL} [paired t]", _did),
)  # fmt: skip


def markdown_table(table: Sequence[dict], columns: Sequence = COLUMNS) -> str:
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in table]
    return "\n".join(lines)


def lr_choice(tuning: Sequence[dict]) -> dict[str, dict]:
    """Each method's lr chosen on the tuning runs (:func:`aggregate.select_lr` on the mean AUC)."""
    from .phases import EVALUATION_SEEDS

    return select_lr([r for r in tuning if math.isfinite(r.get("lr", math.nan))], EVALUATION_SEEDS)


def lr_lines(choice: dict[str, dict], tuning: Sequence[dict]) -> list[str]:
    """The lr choice as a markdown table: mean AUC per lr of the grid (runs), the chosen lr."""
    grid = sorted({lr for c in choice.values() for lr in c["scores"]})
    levels = sorted({r["level"] for r in tuning})
    seeds = sorted({r["seed"] for r in tuning})
    lines = [f"Learning rates chosen on the tuning runs (levels {', '.join(levels)}; seeds "
             f"{', '.join(map(str, seeds))}, none of them an evaluation seed): the lr with the best mean AUC.", "",
             "| method | " + " | ".join(f"AUC at {lr:g} (runs)" for lr in grid) + " | chosen |",
             "|" + "---|" * (len(grid) + 2)]  # fmt: skip
    for method in _ordered(choice):
        c = choice[method]
        cells = [f"{c['scores'][lr]:.3f} ({c['runs'][lr]})" if lr in c["scores"] else "" for lr in grid]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_lr(c['lr'])} |")
    return lines


def drift_lines(records: Sequence[dict]) -> list[str]:
    """The drift-matched tables: each method's mean residual from GRPO's final-accuracy-vs-log10(drift) line."""
    lines = []
    for key, label in (("ppo_kl", "ppo_kl"), ("abs_log_ratio_p99", "|Δ| p99")):
        table = drift_matched(records, baseline=BASELINE, key=key)
        if not table:
            continue
        base = table[0]
        lines += ["", f"Final accuracy at matched drift ({label}): GRPO's runs fit acc_final ≈ "
                  f"{base['intercept']:.3f} + {base['slope']:+.3f}·log10({label}); each method's mean residual from "
                  "that line (95 % CI; a residual whose interval includes zero sits on GRPO's curve as far as these "
                  "runs can tell; 'inside': the share of its runs within GRPO's range of drift).", "",
                  f"| method | runs | median {label} | residual | inside |", "|---|---|---|---|---|"]  # fmt: skip
        for row in table:
            lines.append(f"| {row['method']} | {row['n']} | {row['drift_median']:.4g} | "
                         f"{_num(row['residual_mean'], 3)} ± {_num(row['residual_ci95'], 3)} | {row['inside']:.2f} |")  # fmt: skip
    return lines


def noise_floor_line(records: Sequence[dict]) -> str:
    """The binomial SE of one evaluation at the mean warm-start accuracy."""
    starts = [r["acc_start"] for r in records if math.isfinite(r.get("acc_start", math.nan))]
    sizes = [r["eval_problems"] for r in records if math.isfinite(r.get("eval_problems", math.nan))]
    if not starts or not sizes:
        return ""
    p, n = sum(starts) / len(starts), int(min(sizes))
    return (f"Noise floor: one evaluation on {n} held-out problems at the mean warm-start accuracy {p:.3f} has a "
            f"binomial standard error of {binomial_se(p, n) * 100:.1f} points (√(p(1−p)/n)).")  # fmt: skip


def _ordered(methods) -> list[str]:
    objectives = objective_order()
    return [m for m in objectives if m in methods] + sorted(m for m in methods if m not in objectives)


def frontier_lines(front: dict, ladder: Sequence[str]) -> list[str]:
    objectives = objective_order()
    order = [m for m in objectives if m in front] + sorted(m for m in front if m not in objectives)
    lines = []
    for method in order:
        f = front[method]
        lines.append(f"- **{method}**: {f['mean'] or 'none'} (95 % CI of the gain: certainly up to "
                     f"{f['certain'] or 'none'}, possibly up to {f['possible'] or 'none'})")  # fmt: skip
    return [f"Stability frontier along {' < '.join(ladder)} (highest level up to which the mean final "
            "accuracy stays at or above the warm start):", *lines]


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def plot_accuracy_vs_level(table: Sequence[dict], ladder: Sequence[str], path: Path) -> Path:
    """Final accuracy, AUC and gain per level, mean with its 95 % CI band, one line per objective."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True)
    rows = {(r["level"], r["method"]): r for r in table}
    methods = [m for m in objective_order() if any((lvl, m) in rows for lvl in ladder)]
    xs = list(range(len(ladder)))
    for ax, key, title in zip(axes, ("acc_final", "auc", "gain"),
                              ("final held-out accuracy", "area under the accuracy curve", "final − warm start")):  # fmt: skip
        for method in methods:
            points = [(x, rows[(lvl, method)]) for x, lvl in zip(xs, ladder) if (lvl, method) in rows]
            x = [p[0] for p in points]
            mean = [p[1][f"{key}_mean"] for p in points]
            half = [p[1][f"{key}_ci95"] if math.isfinite(p[1][f"{key}_ci95"]) else 0.0 for p in points]
            line = ax.plot(x, mean, marker="o", label=method)[0]
            ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=line.get_color(), alpha=0.15, linewidth=0)  # fmt: skip
        if key == "gain":
            ax.axhline(0, color="black", linewidth=1, linestyle=":")
        else:
            starts = [r["acc_start_mean"] for r in table if math.isfinite(r["acc_start_mean"])]
            if starts:
                ax.axhline(sum(starts) / len(starts), color="black", linewidth=1, linestyle=":", label="warm start")
        ax.set_xticks(xs, ladder)
        ax.set_title(f"{title} (mean ± 95 % CI)")
        ax.set_xlabel("level (increasing off-policyness)")
        ax.grid(alpha=0.3)
    _legend(axes[0])
    return _save(fig, path)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_drift(table: Sequence[dict], levels: Sequence[str], path: Path) -> Path:
    """The measured drift of every level, per objective."""
    plt = _pyplot()
    panels = (("ppo_kl", "ppo_kl (mean over steps)", True), ("abs_log_ratio_p99", "|Δ| p99", True),
              ("restricted_frac", "attenuated (h'<0.5) / clipped fraction", False),
              ("seq_weight_ess", "sequence-weight ESS", False), ("effective_ratio", "effective update ratio", False))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(22, 4.3), constrained_layout=True)
    rows = {(r["level"], r["method"]): r for r in table}
    xs = list(range(len(levels)))
    for ax, (key, title, log) in zip(axes, panels):
        for method in objective_order():
            points = [(x, rows[(lvl, method)][key]) for x, lvl in zip(xs, levels) if (lvl, method) in rows]
            points = [(x, y) for x, y in points if math.isfinite(y) and (y > 0 or not log)]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        if log and ax.get_lines():
            ax.set_yscale("log")
        ax.set_xticks(xs, levels)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    _legend(axes[0])
    return _save(fig, path)


def plot_curves(records: Sequence[dict], levels: Sequence[str], path: Path) -> Path:
    """Held-out accuracy against steps in every level: mean over seeds, band = min–max over seeds."""
    import numpy as np

    plt = _pyplot()
    cols = min(4, len(levels))
    nrows = math.ceil(len(levels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), constrained_layout=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for r in records:
        steps, accs = parse_curve(r.get("curve", ""))
        if steps:
            grouped[(r["level"], r["method"])].append((steps, accs))
    for ax, lvl in zip(axes.flat, levels):
        for i, method in enumerate(objective_order()):  # colours by position: the same in every panel
            curves = grouped.get((lvl, method), [])
            if not curves:
                continue
            grid = sorted({s for steps, _ in curves for s in steps})
            ys = np.array([np.interp(grid, steps, accs) for steps, accs in curves])
            ax.plot(grid, ys.mean(0), color=colors[i % len(colors)], label=method, marker="o", ms=2)
            ax.fill_between(grid, ys.min(0), ys.max(0), color=colors[i % len(colors)], alpha=0.10, linewidth=0)
        ax.set_title(lvl)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(levels):]:
        ax.axis("off")
    _legend(axes.flat[0])
    axes.flat[0].set_ylabel("held-out accuracy")
    return _save(fig, path)


def plot_accuracy_vs_drift(records: Sequence[dict], path: Path) -> Path:
    """Every run's final accuracy against its measured drift (ppo_kl, |Δ| p99), GRPO's fitted line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = _ordered({r["method"] for r in records})
    for ax, (key, label) in zip(axes, (("ppo_kl", "ppo_kl (mean over steps)"), ("abs_log_ratio_p99", "|Δ| p99"))):
        for i, method in enumerate(methods):
            pts = [(r[key], r["acc_final"]) for r in records if r["method"] == method
                   and math.isfinite(r.get(key, math.nan)) and r[key] > 0 and math.isfinite(r["acc_final"])]  # fmt: skip
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, alpha=0.6, label=method,
                           color=colors[i % len(colors)], marker="os^vD<>"[i // len(colors) % 7])  # fmt: skip
        fit = drift_matched(records, baseline=BASELINE, key=key)
        if fit:
            xs = [r[key] for r in records if r["method"] == BASELINE and math.isfinite(r.get(key, math.nan)) and r[key] > 0]
            lo, hi = math.log10(min(xs)), math.log10(max(xs))
            grid = [lo + (hi - lo) * t / 20 for t in range(21)]
            ax.plot([10**g for g in grid], [fit[0]["intercept"] + fit[0]["slope"] * g for g in grid], color="black",
                    linewidth=1.5, label=f"{BASELINE}: least-squares line")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("final held-out accuracy")
        ax.set_title(f"final accuracy vs measured drift ({key})")
        ax.grid(alpha=0.3)
    _legend(axes[0])
    return _save(fig, path)


def plot_accuracy_vs_staleness(table: Sequence[dict], path: Path) -> Path | None:
    """Final accuracy (mean ± 95 % CI) against the staleness each asynchronous level measured."""
    rows = [r for r in table if r["level"].startswith("A") and math.isfinite(r.get("staleness_mean", math.nan))]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    for method in _ordered({r["method"] for r in rows}):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["staleness_mean"])
        x = [r["staleness_mean"] for r in mine]
        mean = [r["acc_final_mean"] for r in mine]
        half = [r["acc_final_ci95"] if math.isfinite(r["acc_final_ci95"]) else 0.0 for r in mine]
        line = ax.plot(x, mean, marker="o", label=method)[0]
        ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                        color=line.get_color(), alpha=0.12, linewidth=0)  # fmt: skip
    ax.set_xlabel("measured staleness (mean policy versions behind)")
    ax.set_ylabel("final held-out accuracy")
    ax.set_title("asynchronous levels: final accuracy vs measured staleness (mean ± 95 % CI)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_sweeps(table: Sequence[dict], path: Path) -> Path | None:
    """Final accuracy (mean ± 95 % CI) of every method in the sweep levels, GRPO's as a reference band."""
    objectives = objective_order()
    sweep_levels = sorted({r["level"] for r in table if r["method"] not in objectives})
    if not sweep_levels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sweep_levels), figsize=(9 * len(sweep_levels), 4.8), constrained_layout=True,
                             squeeze=False)  # fmt: skip
    for ax, lvl in zip(axes.flat, sweep_levels):
        rows = [r for r in table if r["level"] == lvl and r["method"].startswith(("sspo", "sapo"))]
        ys = list(range(len(rows)))
        ax.errorbar([r["acc_final_mean"] for r in rows], ys,
                    xerr=[r["acc_final_ci95"] if math.isfinite(r["acc_final_ci95"]) else 0 for r in rows],
                    fmt="o", capsize=3)  # fmt: skip
        base = next((r for r in table if r["level"] == lvl and r["method"] == BASELINE), None)
        if base is not None:
            ax.axvspan(base["acc_final_mean"] - base["acc_final_ci95"], base["acc_final_mean"] + base["acc_final_ci95"],
                       color="gray", alpha=0.2, label=f"{BASELINE} (95 % CI)")  # fmt: skip
        starts = [r["acc_start_mean"] for r in rows]
        if starts:
            ax.axvline(starts[0], color="black", linestyle=":", label="warm start")
        ax.set_yticks(ys, [r["method"] for r in rows], fontsize=8)
        ax.set_title(f"{lvl}: final accuracy of every gate/τ (mean ± 95 % CI)")
        ax.grid(axis="x", alpha=0.3)
        _legend(ax)
    return _save(fig, path)


# ----------------------------------------------------------------------------- report
def _cells(records: Sequence[dict], phase: str) -> list[dict]:
    """:func:`aggregate.cell_table` of one phase's runs, each row with its phase, lr and evaluation size."""
    table = cell_table(records, baseline=BASELINE, level_order=ladder_order(), reference_level=REFERENCE_LEVEL)
    facts: dict[tuple[str, str], dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        for key in ("lr", "eval_problems", "model"):
            facts[(r["level"], r["method"])][key].add(r.get(key))
    rows = []
    for row in table:
        f = facts[(row["level"], row["method"])]
        lr = f["lr"].pop() if len(f["lr"]) == 1 else math.nan
        sizes = [n for n in f["eval_problems"] if isinstance(n, int | float) and math.isfinite(n)]
        rows.append({"phase": phase, "level": row["level"], "method": row["method"], "lr": lr,
                     "eval_problems": int(min(sizes)) if sizes else math.nan, "model": ",".join(sorted(map(str, f["model"]))),
                     **{k: v for k, v in row.items() if k not in ("level", "method")}})  # fmt: skip
    return rows


def common_lr_records(phases: dict[str, list[dict]]) -> list[dict]:
    """The common-lr comparison at ``L3``: the common-lr phase's runs, plus the main phase's ``L3`` runs of
    the methods whose chosen lr is the common one (their main runs are their common-lr runs)."""
    common = list(phases.get("common-lr", []))
    if not common:
        return []
    have = {(r["method"], r["seed"]) for r in common}
    common += [{**r, "phase": "common-lr"} for r in phases.get("main", [])
               if r["level"] == "L3" and math.isclose(r.get("lr", math.nan), COMMON_LR_VALUE)
               and (r["method"], r["seed"]) not in have]  # fmt: skip
    return common


def write_report(out: str | Path, *, summary: str = "", records: str | Path | None = None) -> dict:
    """Aggregate every finished run under ``out`` (and the committed records of ``records``); write the
    tables, plots and HTML."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    phases = collect_phases(out, records)
    tuning = phases.get("tune", [])
    main_phase = "main" if "main" in phases else "quick"
    main = phases.get(main_phase, [])
    present = {r["level"] for r in main}
    levels = [name for name in ladder_order() if name in present]
    ladder = main_ladder(levels)
    table = _cells(main, main_phase) if main else []
    common = _cells(common_lr_records(phases), "common-lr") if "common-lr" in phases else []
    scale = _cells(phases["scale"], "scale") if "scale" in phases else []
    front = frontier([r for r in table if r["method"] in objective_order()], ladder)
    write_csv(out / "stress.csv", [*table, *common, *scale])
    write_csv(out / "stress_runs.csv", [r for p, rs in phases.items() if p != "tune" for r in rs])
    sections: list[tuple[str, str]] = []
    if tuning:
        write_csv(out / "stress_lr.csv", tuning)
        sections.append(("Learning rates", "\n".join(lr_lines(lr_choice(tuning), tuning))))
    floor = noise_floor_line(main or tuning)
    notes = "\n".join(f"- `{lv.name}`: {lv.note} (`{' '.join(f'{k}={v}' for k, v in lv.overrides.items())}`)"
                      for lv in LEVELS if lv.name in present)  # fmt: skip
    text = "\n".join(frontier_lines(front, ladder)) if table else ""
    if table:
        sections.append((f"The comparison ({main_phase} phase: each method at its lr)", markdown_table(table)))
        drift = "\n".join(drift_lines(main)).strip()
        if drift:
            sections.append(("The drift-matched view", drift))
    if common:
        sections.append((f"Every method at lr {COMMON_LR_VALUE:g} (L3)", markdown_table(common)))
    if scale:
        sections.append(("The scale check (L3, the 4x model)", markdown_table(scale)))
    body = "\n\n".join(f"## {title}\n\n{content}" for title, content in sections)
    (out / "stress.md").write_text(f"# sspo stress\n\n{summary}\n\n{STATS_NOTE}\n\n{floor}\n\n{text}\n\n"
                                   f"Levels:\n{notes}\n\n{body}\n")  # fmt: skip
    figures = []
    if ladder:
        figures.append(("Accuracy along the ladder", plot_accuracy_vs_level(table, ladder, out / "plots" / "stress_accuracy.png")))
    stale = plot_accuracy_vs_staleness(table, out / "plots" / "stress_staleness.png")
    if stale is not None:
        figures.append(("Accuracy vs measured staleness", stale))
    if main:
        figures.append(("Accuracy vs measured drift", plot_accuracy_vs_drift(main, out / "plots" / "stress_vs_drift.png")))
        figures.append(("Measured drift per level", plot_drift(table, levels, out / "plots" / "stress_drift.png")))
        figures.append(("Accuracy curves per level", plot_curves(main, levels, out / "plots" / "stress_curves.png")))
        sweep = plot_sweeps(table, out / "plots" / "stress_sweeps.png")
        if sweep is not None:
            figures.append(("Gates and temperatures", sweep))
    (out / "report.html").write_text(_html(summary, floor, text, notes, table, sections, figures))
    files = [out / n for n in ("stress.csv", "stress_runs.csv", "stress.md", "report.html")]
    if tuning:
        files.insert(2, out / "stress_lr.csv")
    return {"table": table, "common_lr": common, "scale": scale, "records": main, "phases": phases,
            "frontier": front, "files": files}  # fmt: skip


def _html(summary: str, floor: str, front: str, notes: str, table: Sequence[dict],
          sections: Sequence[tuple[str, str]], figures: Sequence[tuple[str, Path]]) -> str:  # fmt: skip
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r))}</td>" for _, cell in COLUMNS) + "</tr>" for r in table)
    lines = front.splitlines()
    items = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in lines[1:])
    plots = "".join(f"<h2>{html.escape(title)}</h2>{img_tag(path)}" for title, path in figures)
    levels = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in notes.splitlines())
    extra = "".join(f"<h2>{html.escape(title)}</h2><pre>{html.escape(content)}</pre>"
                    for title, content in sections if not title.startswith("The comparison"))  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sspo stress</title>
<style>
{HTML_STYLE}
</style></head><body>
<h1>sspo stress: the off-policy ladder</h1>
<p>{html.escape(summary)}</p><p>{html.escape(STATS_NOTE)}</p><p>{html.escape(floor)}</p>
<p>{html.escape(lines[0] if lines else "")}</p><ul>{items}</ul>
<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
{extra}{plots}
<h2>Levels</h2><ul>{levels}</ul>
</body></html>
"""
