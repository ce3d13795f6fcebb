"""Pieces every experiment report shares: finding finished runs, CSV, per-run series and seed bands
for plots, inlined images for self-contained HTML."""

from __future__ import annotations

import base64
import csv
import html
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

SMOOTH = 5
"""Per-step curves (not accuracy) are trailing means over this many steps before averaging seeds."""

HTML_STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:nth-child(-n+2) { text-align: left; }
code { font-size: 12px; }"""


def finished_runs(out: Path) -> list[tuple[str, str, int, Path]]:
    """``(group, method, seed, run_dir)`` of every finished run under ``out/runs/<group>/<method>/seed<k>/``."""
    found = []
    for final in sorted((out / "runs").glob("*/*/seed*/final_metrics.json")):
        run_dir = final.parent
        seed = run_dir.name[4:]
        if seed.isdigit():
            found.append((run_dir.parent.parent.name, run_dir.parent.name, int(seed), run_dir))
    return found


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """Rows as CSV, columns in order of first appearance, non-finite values blank."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                             for k, v in row.items()})  # fmt: skip


def series(rows: Sequence[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    """``(x, y)`` of ``key`` in a run's rows, x the step or the training seconds; ``restricted`` is the
    attenuated (soft gates) or clipped fraction; per-step series are trailing :data:`SMOOTH`-step means."""
    xs, ys = [], []
    last_elapsed = 0.0
    for r in rows:
        if isinstance(r.get("time/elapsed_s"), int | float):
            last_elapsed = r["time/elapsed_s"]
        if key == "restricted":
            value = r.get("gate/attenuated_frac", r.get("pg_clipfrac"))
        else:
            value = r.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if key != "eval/accuracy" and r.get("step", 0) < 1:
            continue
        xs.append(r["step"] if x_key == "step" else (last_elapsed if r.get("step", 0) > 0 else 0.0))
        ys.append(float(value))
    if key != "eval/accuracy" and len(ys) > 1:
        ys = [sum(ys[max(0, i - SMOOTH + 1): i + 1]) / (i + 1 - max(0, i - SMOOTH + 1)) for i in range(len(ys))]
    return xs, ys


def band(per_seed: list[tuple[list[float], list[float]]], by_time: bool):
    """Mean and min–max over seeds at each x (x = step; for time, seed curves are interpolated on a grid)."""
    if not by_time:
        values: dict[float, list[float]] = defaultdict(list)
        for xs, ys in per_seed:
            seen: dict[float, float] = {}
            for x, y in zip(xs, ys):
                seen[x] = y  # the final evaluation shares the last step's x: keep the last value
            for x, y in seen.items():
                values[x].append(y)
        grid = sorted(values)
        return grid, [sum(values[x]) / len(values[x]) for x in grid], [min(values[x]) for x in grid], \
            [max(values[x]) for x in grid]  # fmt: skip
    import numpy as np

    end = min(max(xs) for xs, _ in per_seed if xs)
    grid = np.linspace(0, end, 50)
    curves = np.array([np.interp(grid, xs, ys) for xs, ys in per_seed if xs])
    return list(grid), list(curves.mean(0)), list(curves.min(0)), list(curves.max(0))


def img_tag(path: Path) -> str:
    """A self-contained ``<img>`` (the PNG inlined as base64)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" style="max-width:100%">'


