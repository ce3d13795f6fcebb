"""Outputs of ``sspo compare``: ``runs.csv`` (one row per run), ``results.csv`` (mean and 95% CI per
setting × method, controls included), ``results.md``, PNG plots and a self-contained ``report.html``.

Everything is read back from the run directories (``runs/<setting>/<method>/seed<k>/``) and the
control results, so a report can be rebuilt at any time (``--report-only``), also while runs go on.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ...trainer.metrics_log import read_jsonl
from ..reporting import HTML_STYLE, SMOOTH, band, finished_runs, img_tag, series, write_csv
from .aggregate import RUN_METRICS, group_stats, mean_ci, summarise_run

__all__ = ["collect", "write_report"]

DEFAULT_TARGET_MARGIN = 0.05
"""Without ``--target-accuracy`` the target is the mean no-training accuracy + this margin."""

CURVES = (
    ("eval/accuracy", "held-out greedy accuracy", "step"),
    ("eval/accuracy", "held-out accuracy vs training time", "time/elapsed_s"),
    ("reward/mean", "mean reward (rollouts)", "step"),
    ("entropy", "token entropy", "step"),
    ("grad_norm", "gradient norm (pre-clip)", "step"),
    ("seq_weight/var", "sequence-weight variance", "step"),
    ("seq_weight/ess", "sequence-weight ESS", "step"),
    ("restricted", "attenuated (h'<0.5) or clipped tokens", "step"),
)

TABLE_COLUMNS = (
    ("acc_final", "acc final", 3),
    ("acc_best", "acc best", 3),
    ("gain_vs_none", "gain vs none", 3),
    ("gain_vs_sft", "gain vs SFT", 3),
    ("steps_to_target", "steps→target", 0),
    ("entropy_start", "entropy start", 3),
    ("entropy_end", "entropy end", 3),
    ("grad_norm_max", "max grad norm", 2),
    ("loss_spikes", "loss spikes", 1),
    ("grad_spikes", "grad spikes", 1),
    ("seq_weight_var", "seq-w var", 4),
    ("seq_weight_ess", "seq-w ESS", 3),
    ("restricted_frac", "atten./clipped", 3),
    ("train_seconds", "train s", 0),
    ("tokens_per_s", "tokens/s", 0),
)


# ----------------------------------------------------------------------------- reading
def collect(out: str | Path, *, target: float | None = None, spike_window: int = 20, spike_k: float = 6.0) -> dict:
    """Per-run records, SFT controls, the target used and the per-step rows of every finished run."""
    out = Path(out)
    runs = finished_runs(out)
    rows_of = {(s, m, seed): read_jsonl(d / "metrics.jsonl") for s, m, seed, d in runs}
    finals = {(s, m, seed): json.loads((d / "final_metrics.json").read_text()) for s, m, seed, d in runs}
    before = [f["accuracy_before"] for f in finals.values() if isinstance(f.get("accuracy_before"), int | float)]
    if target is None and before:
        target = min(1.0, sum(before) / len(before) + DEFAULT_TARGET_MARGIN)
    sft = {}
    for path in sorted((out / "controls" / "sft").glob("seed*/result.json")):
        sft[int(path.parent.name[4:])] = json.loads(path.read_text())
    records = []
    for (setting, method, seed), rows in rows_of.items():
        record = {"setting": setting, "method": method, "seed": seed}
        record.update(summarise_run(rows, finals[(setting, method, seed)], target=target,
                                    spike_window=spike_window, spike_k=spike_k))  # fmt: skip
        if seed in sft:
            record["gain_vs_sft"] = record["acc_final"] - sft[seed]["accuracy"]
        records.append(record)
    none_by_seed: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if isinstance(r["acc_before"], int | float) and math.isfinite(r["acc_before"]):
            none_by_seed[r["seed"]].append(r["acc_before"])
    return {
        "records": records, "rows": rows_of, "sft": sft, "target": target,
        "no_training": {seed: sum(v) / len(v) for seed, v in none_by_seed.items()},
    }  # fmt: skip


def is_ablation(method: str) -> bool:
    from .plan import ABLATIONS

    return any(method == name for group in ABLATIONS.values() for name, _ in group)


def method_order(records: Sequence[dict]) -> list[tuple[str, str]]:
    """(setting, method) groups in a stable order: settings, then main objectives, then ablations."""
    keys = {(r["setting"], r["method"]) for r in records}
    return sorted(keys, key=lambda k: (k[0], is_ablation(k[1]), k[1]))


def aggregate(data: dict) -> list[dict]:
    """One row per (setting, method) plus the two control rows (``setting = control``)."""
    keys = list(RUN_METRICS)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in data["records"]:
        groups[(r["setting"], r["method"])].append(r)
    table = []
    for key in method_order(data["records"]):
        group = groups[key]
        table.append({"setting": key[0], "method": key[1], **group_stats(group, keys),
                      "seeds": " ".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"]))})  # fmt: skip
    for method, values in (("no-training", list(data["no_training"].values())),
                           ("sft", [v["accuracy"] for v in data["sft"].values()])):  # fmt: skip
        if values:
            mean, half, n = mean_ci(values)
            row = {"setting": "control", "method": method, "n_seeds": n, "acc_final_mean": mean, "acc_final_ci95": half}
            if method == "sft":
                for name, key in (("train_seconds", "seconds"), ("steps", "steps")):
                    m, h, _ = mean_ci([v[key] for v in data["sft"].values()])
                    row[f"{name}_mean"], row[f"{name}_ci95"] = m, h
            table.append(row)
    return table


# ----------------------------------------------------------------------------- tables
def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}"


def _cell(row: dict, key: str, digits: int) -> str:
    mean = row.get(f"{key}_mean")
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        reached = row.get("reached_mean")
        if key == "steps_to_target" and isinstance(reached, float) and math.isfinite(reached):
            return f"never (0/{row['n_seeds']})"
        return "–"
    half = row.get(f"{key}_ci95")
    text = _fmt(mean, digits)
    if isinstance(half, int | float) and math.isfinite(half):
        text += f" ± {_fmt(half, digits)}"
    if key == "steps_to_target":
        reached = row.get("reached_mean")
        if isinstance(reached, float) and math.isfinite(reached):
            text += f" ({round(reached * row['n_seeds'])}/{row['n_seeds']})"
    return text


def table_cells(table: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["setting", "method", "seeds"] + [label for _, label, _ in TABLE_COLUMNS]
    body = []
    for row in table:
        body.append([row["setting"], row["method"], str(row["n_seeds"])]
                    + [_cell(row, key, digits) for key, _, digits in TABLE_COLUMNS])  # fmt: skip
    return header, body


def markdown_table(table: Sequence[dict]) -> str:
    header, body = table_cells(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot_setting(data: dict, setting: str, methods: Sequence[str], path: Path, title: str) -> Path:
    """Mean curves with seed bands (min–max over seeds) per method; control lines on accuracy panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, x_key) in zip(axes.flat, CURVES):
        drawn = False
        for i, method in enumerate(methods):
            per_seed = [series(rows, key, x_key) for (s, m, _), rows in sorted(data["rows"].items()) if
                        s == setting and m == method]  # fmt: skip
            per_seed = [c for c in per_seed if c[0]]
            if not per_seed:
                continue
            grid, mean, low, high = band(per_seed, x_key != "step")
            color = colors[i % len(colors)]
            ax.plot(grid, mean, color=color, label=f"{method} (n={len(per_seed)})",
                    marker="o" if key == "eval/accuracy" and x_key == "step" else None, ms=3)  # fmt: skip
            if len(per_seed) > 1:
                ax.fill_between(grid, low, high, color=color, alpha=0.18, linewidth=0)
            drawn = True
        if key == "eval/accuracy":
            for name, values, style in (("no training", list(data["no_training"].values()), ":"),
                                        ("SFT control", [v["accuracy"] for v in data["sft"].values()], "--")):  # fmt: skip
                if values:
                    ax.axhline(sum(values) / len(values), color="black", linestyle=style, linewidth=1, label=name)
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if key == "grad_norm" and drawn and ys and min(ys) > 0 and max(ys) > 10 * min(ys):
            ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("training seconds" if x_key != "step" else "step")
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 8), frameon=False)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_accuracy_bars(table: Sequence[dict], path: Path) -> Path:
    """Final and best accuracy per setting/method with 95% CIs; controls as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if r["setting"] != "control"]
    controls = {r["method"]: r for r in table if r["setting"] == "control"}
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4.5), constrained_layout=True)
    xs = list(range(len(rows)))

    def err(key):
        return [r.get(f"{key}_ci95") if math.isfinite(r.get(f"{key}_ci95", math.nan)) else 0 for r in rows]

    ax.bar([x - 0.2 for x in xs], [r["acc_final_mean"] for r in rows], 0.4, yerr=err("acc_final"), capsize=3,
           label="final")  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [r["acc_best_mean"] for r in rows], 0.4, yerr=err("acc_best"), capsize=3,
           label="best", alpha=0.6)  # fmt: skip
    for name, style in (("no-training", ":"), ("sft", "--")):
        if name in controls:
            ax.axhline(controls[name]["acc_final_mean"], color="black", linestyle=style, linewidth=1,
                       label=f"control: {name}")  # fmt: skip
    ax.set_xticks(xs, [f"{r['setting']}\n{r['method']}" for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("held-out greedy accuracy (mean ± 95% CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def make_plots(data: dict, table: Sequence[dict], plot_dir: Path) -> list[tuple[str, Path]]:
    """Every figure of the report: accuracy bars, one curve figure per setting, one for the ablations."""
    from .plan import ABLATION_SETTING

    figures = [("Final and best accuracy", plot_accuracy_bars(table, plot_dir / "accuracy.png"))]
    groups = method_order(data["records"])
    for setting in sorted({s for s, _ in groups}):
        main = [m for s, m in groups if s == setting and not is_ablation(m)]
        if main:
            figures.append((f"Setting {setting}", plot_setting(data, setting, main, plot_dir / f"curves_{setting}.png",
                                                               f"{setting}: mean over seeds, band = min–max over seeds")))  # fmt: skip
    ablations = [m for s, m in groups if s == ABLATION_SETTING and (m == "sspo" or is_ablation(m))]
    if any(is_ablation(m) for m in ablations):
        figures.append(("SSPO ablations (gate, τ)", plot_setting(
            data, ABLATION_SETTING, ablations, plot_dir / "curves_ablations.png",
            f"SSPO ablations in the {ABLATION_SETTING} setting (sspo = arctan gate, τ = 1 / 1.05)")))  # fmt: skip
    return figures


# ----------------------------------------------------------------------------- HTML
def html_report(table: Sequence[dict], figures: Sequence[tuple[str, Path]], meta: dict) -> str:
    from .plan import SETTING_NOTES, SETTINGS

    header, body = table_cells(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    settings = "".join(f"<tr><td>{html.escape(n)}</td><td><code>{html.escape(' '.join(f'{k}={v}' for k, v in o.items()) or '—')}"
                       f"</code></td><td>{html.escape(SETTING_NOTES[n])}</td></tr>" for n, o in SETTINGS.items())  # fmt: skip
    definitions = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in RUN_METRICS.items())
    plots = "".join(f"<h2>{html.escape(title)}</h2>{img_tag(path)}" for title, path in figures)
    target = meta.get("target")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sspo compare</title>
<style>
{HTML_STYLE}
</style></head><body>
<h1>sspo compare</h1>
<p>{html.escape(meta.get("summary", ""))}</p>
<p>Cells are the mean over seeds ± the half-width of the t-based 95% confidence interval
(mean ± t<sub>0.975, n−1</sub>·s/√n; blank with one seed). Target accuracy for “steps→target”:
{"–" if target is None else f"{target:.3f}"} (the count in brackets is the seeds that reached it; the mean is
over those). Controls start from the same warm start: “no-training” is the step-0 evaluation, “sft” continues
supervised training on the worked solutions for the RL runs' mean training time.</p>
<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>
{plots}
<h2>Settings</h2>
<table><thead><tr><th>setting</th><th>overrides</th><th>meaning</th></tr></thead><tbody>{settings}</tbody></table>
<h2>Column definitions</h2><ul>{definitions}</ul>
<p>Spikes: a point above the median of the previous {meta.get("spike_window")} steps by more than
{meta.get("spike_k")}·σ, σ = max(1.4826·MAD, 1.2533·mean absolute deviation) of that window (two-sided for the
loss). ESS of sequence weights s: (Σs)²/(G′·Σs²). Curves: mean over seeds, band = min–max over seeds; per-step
series are trailing {SMOOTH}-step means.</p>
</body></html>
"""


def write_report(out: str | Path, *, target: float | None = None, spike_window: int = 20, spike_k: float = 6.0,
                 summary: str = "") -> dict:  # fmt: skip
    """Aggregate every finished run under ``out`` and write the CSVs, Markdown, plots and HTML."""
    out = Path(out)
    data = collect(out, target=target, spike_window=spike_window, spike_k=spike_k)
    table = aggregate(data)
    write_csv(out / "runs.csv", data["records"])
    write_csv(out / "results.csv", table)
    meta = {"target": data["target"], "spike_window": spike_window, "spike_k": spike_k, "summary": summary}
    markdown = markdown_table(table)
    target_text = "–" if data["target"] is None else f"{data['target']:.3f}"
    (out / "results.md").write_text(f"# sspo compare\n\n{summary}\n\nmean ± 95% CI over seeds; target accuracy "
                                    f"{target_text}\n\n{markdown}\n")  # fmt: skip
    figures = make_plots(data, table, out / "plots") if data["records"] else []
    (out / "report.html").write_text(html_report(table, figures, meta))
    return {"table": table, "records": data["records"], "target": data["target"],
            "files": [out / n for n in ("results.csv", "runs.csv", "results.md", "report.html")]}  # fmt: skip
