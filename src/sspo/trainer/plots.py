"""PNG plots of a run from its ``metrics.jsonl``: reward, accuracy, entropy, grad norm, sequence weights."""

from __future__ import annotations

from pathlib import Path

from .metrics_log import read_metrics

PANELS = (
    ("reward", ["reward/mean"]),
    ("held-out greedy accuracy", ["eval/accuracy"]),
    ("entropy", ["entropy"]),
    ("gradient norm", ["grad_norm"]),
    ("sequence weight", ["seq_weight/mean", "seq_weight/min", "seq_weight/max"]),
    ("attenuated / clipped tokens", ["gate/attenuated_frac", "pg_clipfrac"]),
)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float):
            xs.append(row["step"])
            ys.append(value)
    return xs, ys


def plot_run(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``plots/training.png`` (or ``path``) for the run and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(path) if path else run_dir / "plots" / "training.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        drawn = False
        for key in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=key)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn and len(keys) > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle(run_dir.name)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
