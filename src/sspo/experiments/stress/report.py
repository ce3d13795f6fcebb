"""Outputs of ``sspo stress``: ``stress.csv`` (one row per level × method), ``stress_runs.csv`` (one per
run), ``stress.md``, PNG plots and a self-contained ``report.html``, all rebuilt from the run
directories (``--report-only`` works while runs go on)."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ...trainer.metrics_log import read_jsonl
from ..reporting import HTML_STYLE, band, finished_runs, img_tag, series, write_csv
from .aggregate import COLLAPSE_DROP, cell_table, frontier, summarise_stress_run
from .ladder import BASELINE, LEVELS, MAIN_OBJECTIVES

__all__ = ["collect", "markdown_table", "write_report"]

STATS_NOTE = (
    "Each ± is the half-width of a Student-t 95 % confidence interval of the mean over n seeds "
    "(t_{0.975,n−1}·s/√n). Paired differences vs GRPO are per seed (same warm start, problems and first "
    "rollout), with a paired-t 95 % CI and a paired percentile-bootstrap 95 % CI (10,000 resamples). "
    f"Collapse: an evaluation ≥ {COLLAPSE_DROP:.0%} points below the warm start; its interval is Wilson's 95 %."
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


def collect(out: str | Path) -> dict:
    """Per-run records and rows of every finished run under ``out``."""
    records, rows_of = [], {}
    for lvl, method, seed, run_dir in finished_runs(Path(out)):
        rows = read_jsonl(run_dir / "metrics.jsonl")
        rows_of[(lvl, method, seed)] = rows
        records.append({"level": lvl, "method": method, "seed": seed, **summarise_stress_run(rows)})
    return {"records": records, "rows": rows_of}


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
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] boot [{blo:+.3f}, {bhi:+.3f}]"


def _num(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else ""


COLUMNS = (
    ("level", lambda r: r["level"]),
    ("method", lambda r: r["method"]),
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
    ("best", lambda r: _pm(r, "acc_best")),
    ("AUC", lambda r: _pm(r, "auc")),
    ("collapse", lambda r: f"{_num(r['collapse_rate'], 2)} [{_num(r['collapse_lo'], 2)}, {_num(r['collapse_hi'], 2)}]"),
    ("final − GRPO [paired t] boot", lambda r: _interval(r, "acc_final")),
)


def markdown_table(table: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |" for row in table]
    return "\n".join(lines)


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


def plot_curves(data: dict, levels: Sequence[str], path: Path) -> Path:
    """Held-out accuracy against steps in every level: mean over seeds, band = min–max over seeds."""
    plt = _pyplot()
    cols = min(4, len(levels))
    nrows = math.ceil(len(levels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), constrained_layout=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for (lvl, method, _), rows in sorted(data["rows"].items()):
        grouped[(lvl, method)].append(series(rows, "eval/accuracy", "step"))
    for ax, lvl in zip(axes.flat, levels):
        for i, method in enumerate(objective_order()):  # colours by position: the same in every panel
            per_seed = [c for c in grouped.get((lvl, method), []) if c[0]]
            if not per_seed:
                continue
            grid, mean, low, high = band(per_seed, False)
            ax.plot(grid, mean, color=colors[i % len(colors)], label=method, marker="o", ms=2)
            ax.fill_between(grid, low, high, color=colors[i % len(colors)], alpha=0.12, linewidth=0)
        ax.set_title(lvl)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(levels):]:
        ax.axis("off")
    _legend(axes.flat[0])
    axes.flat[0].set_ylabel("held-out accuracy")
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
def write_report(out: str | Path, *, summary: str = "") -> dict:
    """Aggregate every finished run under ``out``; write the tables, plots and HTML."""
    out = Path(out)
    data = collect(out)
    present = {r["level"] for r in data["records"]}
    levels = [name for name in ladder_order() if name in present]
    ladder = main_ladder(levels)
    table = cell_table(data["records"], baseline=BASELINE, level_order=ladder_order())
    front = frontier([r for r in table if r["method"] in objective_order()], ladder)
    write_csv(out / "stress.csv", table)
    write_csv(out / "stress_runs.csv", data["records"])
    notes = "\n".join(f"- `{lv.name}`: {lv.note} (`{' '.join(f'{k}={v}' for k, v in lv.overrides.items())}`)"
                      for lv in LEVELS if lv.name in present)  # fmt: skip
    text = "\n".join(frontier_lines(front, ladder))
    markdown = markdown_table(table)
    (out / "stress.md").write_text(f"# sspo stress\n\n{summary}\n\n{STATS_NOTE}\n\n{text}\n\nLevels:\n{notes}\n\n{markdown}\n")
    figures = []
    if ladder:
        figures.append(("Accuracy along the ladder", plot_accuracy_vs_level(table, ladder, out / "plots" / "stress_accuracy.png")))
    if data["records"]:
        figures.append(("Measured drift per level", plot_drift(table, levels, out / "plots" / "stress_drift.png")))
        figures.append(("Accuracy curves per level", plot_curves(data, levels, out / "plots" / "stress_curves.png")))
        sweep = plot_sweeps(table, out / "plots" / "stress_sweeps.png")
        if sweep is not None:
            figures.append(("Gates and temperatures", sweep))
    (out / "report.html").write_text(_html(summary, text, notes, table, figures))
    return {"table": table, "records": data["records"], "frontier": front,
            "files": [out / n for n in ("stress.csv", "stress_runs.csv", "stress.md", "report.html")]}  # fmt: skip


def _html(summary: str, front: str, notes: str, table: Sequence[dict], figures: Sequence[tuple[str, Path]]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r))}</td>" for _, cell in COLUMNS) + "</tr>" for r in table)
    items = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in front.splitlines()[1:])
    plots = "".join(f"<h2>{html.escape(title)}</h2>{img_tag(path)}" for title, path in figures)
    levels = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in notes.splitlines())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sspo stress</title>
<style>
{HTML_STYLE}
</style></head><body>
<h1>sspo stress: the off-policy ladder</h1>
<p>{html.escape(summary)}</p><p>{html.escape(STATS_NOTE)}</p>
<p>{html.escape(front.splitlines()[0])}</p><ul>{items}</ul>
<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
{plots}
<h2>Levels</h2><ul>{levels}</ul>
</body></html>
"""
