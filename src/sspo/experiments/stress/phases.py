"""The phases of the powered stress ladder and what each needs from the ones before:

1. ``tune``: every method at every lr of the grid on the tuning seeds (1000, 1001), at ``L3`` and ``A4``;
   each method's lr is the one with the best mean AUC there (:func:`aggregate.select_lr`).
2. ``main``: every method at its chosen lr, every level, the evaluation seeds (0-7, 0-11 in the headline
   levels).
3. ``common-lr``: ``L3`` at lr 1e-4 for the methods whose chosen lr is another (the others' main runs
   are their common-lr runs): the second table.
4. ``scale``: ``L3`` with the 4x model for GRPO, SSPO (matched τ), VESPO and the best of the rest at
   ``L3`` in the main phase.

Each phase runs under ``--out/<phase>/``; ``--quick`` runs its small ladder in ``--out`` itself.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
from pathlib import Path

from .ladder import BASELINE, COMMON_LR_VALUE, Ladder, build_plan

__all__ = ["EVALUATION_SEEDS", "chosen_lrs", "phase_plan", "read_csv_records", "recorded_runs"]

EVALUATION_SEEDS = range(0, 100)
"""Seeds below 100 are evaluation seeds; the tuning phase's (1000, 1001) must never be among them."""
SCALE_FIXED = ("grpo", "sspo-matched", "vespo")


def read_csv_records(path: Path) -> list[dict]:
    """Rows of a per-run CSV with numbers parsed (blank → NaN)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict = {}
            for key, value in row.items():
                if key in ("level", "method", "variant", "phase", "model", "curve"):
                    parsed[key] = value
                elif value == "":
                    parsed[key] = math.nan
                else:
                    try:
                        number = float(value)
                    except ValueError:
                        parsed[key] = value
                        continue
                    parsed[key] = int(number) if key == "seed" else number
            rows.append(parsed)
    return rows


def recorded_runs(records_dir: str | Path | None, phase: str | None) -> set[tuple[str, str, int]]:
    """``(level, run directory's method name, seed)`` of the runs of ``phase`` the committed per-run CSVs
    under ``records_dir`` already hold (``stress_lr.csv`` for the tuning phase, else ``stress_runs.csv``)."""
    from .report import committed_records

    if phase is None:
        return set()
    return {(r["level"], r["variant"], int(r["seed"])) for r in committed_records(records_dir, phase)}


def _tuning_records(out: Path, lr_from: str | None, records_dir: str | None) -> list[dict]:
    from .report import collect_phases

    if lr_from:
        return [r for r in read_csv_records(Path(lr_from)) if r.get("phase", "tune") == "tune"]
    return collect_phases(out, records_dir, only=("tune",)).get("tune", [])


def chosen_lrs(out: Path, ladder: Ladder | None = None, *, lr_from: str | None = None,
               records_dir: str | None = None) -> dict[str, dict] | None:  # fmt: skip
    """Each method's lr chosen on the tuning runs, or ``None`` while a method of ``ladder`` (default:
    the tuning phase's) lacks a complete grid (every lr on every tuning seed and level)."""
    from .ladder import TUNE
    from .report import lr_choice

    tune = ladder or TUNE
    records = [r for r in _tuning_records(out, lr_from, records_dir) if math.isfinite(r.get("lr", math.nan))]
    need = len(tune.levels) * tune.seeds
    choice = lr_choice(records) if records else {}
    for method in tune.objectives:
        runs = choice.get(method, {}).get("runs", {})
        if any(runs.get(lr, 0) < need for lr in tune.lrs):
            return None
    return choice


def _best_of_the_rest(out: Path) -> str | None:
    from .aggregate import cell_table
    from .report import collect

    table = cell_table([r for r in collect(out / "main", "main")["records"] if r["level"] == "L3"], baseline=BASELINE)
    rest = [r for r in table if r["method"] not in SCALE_FIXED and math.isfinite(r["acc_final_mean"])]
    return max(rest, key=lambda r: r["acc_final_mean"])["method"] if rest else None


def phase_plan(out: Path, phase: str | None, ladder: Ladder, args: argparse.Namespace):
    """``(plan, summary)`` of one phase; ``plan`` is ``None`` (and the summary says why) while it waits
    for an earlier phase."""
    from .ladder import MAIN

    where = out if phase is None else out / phase
    summary = (f"{phase or 'quick'}: levels {','.join(ladder.levels)}; methods {','.join(ladder.objectives)}; "
               f"{ladder.seeds} seeds" + (f" ({ladder.headline_seeds} in {','.join(ladder.headline_levels)})"
                                         if ladder.headline_seeds > ladder.seeds else ""))  # fmt: skip
    if phase in ("main", "common-lr", "scale"):
        choice = chosen_lrs(out, lr_from=args.lr_from, records_dir=args.records)
        if choice is None:
            return None, (f"stress: the {phase} phase waits for the tuning phase (run --phase tune to the end, or "
                          "pass --lr-from a stress_lr.csv)")  # fmt: skip
        lrs = {m: c["lr"] for m, c in choice.items()}
        if phase == "common-lr":
            others = tuple(m for m in ladder.objectives if lrs.get(m, COMMON_LR_VALUE) != COMMON_LR_VALUE)
            if others and BASELINE not in others:
                others = (BASELINE, *others)  # the baseline's 1e-4 runs are its main runs: pairs need them here
            ladder = dataclasses.replace(ladder, objectives=others or (BASELINE,))
        else:
            ladder = dataclasses.replace(ladder, lr=tuple(lrs.items()))
        if phase == "scale" and args.objectives is None:
            best = _best_of_the_rest(out)
            if best is None or any(not j.done() for j in build_plan(out / "main", MAIN, workers=1).runs):
                return None, "stress: the scale phase waits for the main phase (its best method at L3)"
            ladder = dataclasses.replace(ladder, objectives=(*SCALE_FIXED, best))
        summary += "; lr " + ", ".join(f"{m} {lr:g}" for m, lr in ladder.lr or (("all", COMMON_LR_VALUE),))
    plan = build_plan(where, ladder, workers=args.workers, overrides=args.overrides,
                      skip=recorded_runs(args.records, phase))  # fmt: skip
    return plan, summary
