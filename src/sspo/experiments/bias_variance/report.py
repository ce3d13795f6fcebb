"""Tables (CSV, Markdown) and plots of the bias–variance study."""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["PLOTTED", "markdown_tables", "plot_metric", "write_csv", "write_report"]

PLOTTED = {
    "cosine": ("cos(E[g], ∇J)", "linear"),
    "projection": ("⟨E[g], ∇J⟩ / ‖∇J‖²", "linear"),
    "nmse_update": ("NMSE of a K-group update (best step size)", "linear"),
    "snr": ("useful SNR ⟨E[g], ∇J⟩² / (‖∇J‖² tr Σ)", "log"),
}
"""Metric → (axis label, y scale) of the figures ``bias_variance_<metric>.png``."""

TABLED = ("cosine", "projection", "snr", "nmse_update", "nmse", "cosine_single", "variance", "mse")


def write_csv(rows: list[dict], path: Path) -> None:
    """Write ``rows`` (dicts, possibly with different keys) to ``path`` as CSV."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 100 or (value != 0 and abs(value) < 0.01):
        return f"{value:.2e}"
    return f"{value:.3f}"


def markdown_tables(summary: list[dict], metrics=TABLED) -> str:
    """One pivot table per (metric, length): rows are objectives, columns the KL targets."""
    lengths = sorted({r["length"] for r in summary})
    kls = sorted({r["kl_target"] for r in summary})
    objectives = list(dict.fromkeys(r["objective"] for r in summary))
    index = {(r["objective"], r["length"], r["kl_target"]): r for r in summary}
    parts = []
    for metric in metrics:
        for length in lengths:
            parts.append(f"#### {metric}, L = {length}\n")
            parts.append("| objective | " + " | ".join(f"KL {k:g}" for k in kls) + " |")
            parts.append("|---|" + "---:|" * len(kls))
            for obj in objectives:
                cells = [_fmt(index[(obj, length, k)][metric]) for k in kls if (obj, length, k) in index]
                parts.append(f"| {obj} | " + " | ".join(cells) + " |")
            parts.append("")
    return "\n".join(parts)


def plot_metric(summary: list[dict], metric: str, path: Path) -> None:
    """Metric against the KL target, one panel per length, one line per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, scale = PLOTTED.get(metric, (metric, "linear"))
    lengths = sorted({r["length"] for r in summary})
    objectives = list(dict.fromkeys(r["objective"] for r in summary))
    positive = sorted({r["kl_target"] for r in summary if r["kl_target"] > 0})
    fig, axes = plt.subplots(
        1, len(lengths), figsize=(3.8 * len(lengths) + 1.4, 3.4), sharey=True, squeeze=False
    )
    colors = plt.get_cmap("tab10")
    markers = "ov^sDP*Xhp"
    for ax, length in zip(axes[0], lengths):
        for k, obj in enumerate(objectives):
            rows = sorted((r for r in summary if r["objective"] == obj and r["length"] == length),
                          key=lambda r: r["kl_target"])  # fmt: skip
            sspo_like = obj.startswith("sspo")
            ax.plot(
                [r["kl_target"] for r in rows], [r[metric] for r in rows],
                label=obj, color=colors(k % 10), marker=markers[k % len(markers)], markersize=4,
                linewidth=2.2 if sspo_like else 1.2, linestyle="-" if sspo_like else "--",
            )  # fmt: skip
        if positive:
            ax.set_xscale("symlog", linthresh=positive[0])
        ax.set_yscale(scale)
        ax.set_title(f"L = {length}")
        ax.set_xlabel("KL(μ ‖ π_θ)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(label)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(summary: list[dict], raw: list[dict], config, out: Path, seconds: float) -> None:
    """Write the CSVs, ``bias_variance.md`` and (if ``config.plots``) the PNG figures into ``out``."""
    write_csv(summary, out / "bias_variance.csv")
    write_csv(raw, out / "bias_variance_raw.csv")
    header = (
        "# Bias–variance study\n\n"
        f"V = {config.vocab}, lengths {list(config.lengths)}, KL targets {list(config.kl_targets)} "
        f"({config.kl_unit}), G = {config.group_size}, M = {config.num_batches} batches, "
        f"K = {config.update_groups} groups per update (nmse_update), {config.policies} random policies per length (means shown), drift `{config.drift}`, "
        f"advantage `{config.advantage}`, reward: digit sum = round({config.reward_target_frac:g}·L·(V−1)) "
        f"± {config.reward_tolerance}, seed {config.seed}. Runtime {seconds:.1f} s.\n\n"
    )
    (out / "bias_variance.md").write_text(header + markdown_tables(summary))
    if config.plots:
        for metric in PLOTTED:
            plot_metric(summary, metric, out / f"bias_variance_{metric}.png")
