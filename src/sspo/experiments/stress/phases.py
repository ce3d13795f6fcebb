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
                    try:  # an integer stays one, so a committed CSV is written back unchanged
                        parsed[key] = int(value) if value.lstrip("-").isdigit() else float(value)
                    except ValueError:
                        parsed[key] = value
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


def _grid_choice(records: list[dict], tune: Ladder, lrs: tuple[float, ...]) -> dict[str, dict] | None:
    """:func:`report.lr_choice` over the runs at ``lrs``, or ``None`` while a method lacks one of them (on
    every tuning seed and level)."""
    from .report import lr_choice

    mine = [r for r in records if any(math.isclose(r["lr"], lr) for lr in lrs)]
    choice = lr_choice(mine) if mine else {}
    need = len(tune.levels) * tune.seeds
    for method in tune.objectives:
        runs = choice.get(method, {}).get("runs", {})
        if any(sum(n for got, n in runs.items() if math.isclose(got, lr)) < need for lr in lrs):
            return None
    return choice


def beyond_the_edge(choice: dict[str, dict], tune: Ladder) -> dict[float, tuple[str, ...]]:
    """``{lr: methods}``: the methods whose best lr on the grid is one of its edges, by the point past
    that edge (:data:`ladder.LR_BEYOND`) they also run at."""
    from .ladder import LR_BEYOND

    beyond: dict[float, tuple[str, ...]] = {}
    for edge, further in LR_BEYOND.items():
        methods = tuple(m for m in tune.objectives if m in choice and choice[m]["lr"] is not None
                        and math.isclose(choice[m]["lr"], edge))  # fmt: skip
        if methods and edge in tune.lrs:
            beyond[further] = methods
    return beyond


def _tuning_records_with_lr(out: Path, lr_from: str | None, records_dir: str | None) -> list[dict]:
    return [r for r in _tuning_records(out, lr_from, records_dir) if math.isfinite(r.get("lr", math.nan))]


def _tuning_state(records: list[dict], tune: Ladder):
    """``(grid choice, {lr past an edge: methods}, the first such (lr, methods) still incomplete)``;
    ``(None, {}, None)`` while the grid itself is incomplete."""
    grid = _grid_choice(records, tune, tune.lrs)
    if grid is None:
        return None, {}, None
    beyond = beyond_the_edge(grid, tune)
    missing = next(((lr, methods) for lr, methods in beyond.items()
                    if _grid_choice(records, dataclasses.replace(tune, objectives=methods), (lr,)) is None), None)  # fmt: skip
    return grid, beyond, missing


def chosen_lrs(out: Path, ladder: Ladder | None = None, *, lr_from: str | None = None,
               records_dir: str | None = None) -> dict[str, dict] | None:  # fmt: skip
    """Each method's lr chosen on the tuning runs, or ``None`` while the tuning is incomplete: a method of
    ``ladder`` (default: the tuning phase's) lacks a run of the grid, or its best on the grid is an edge
    and it lacks the runs one point past it (:func:`beyond_the_edge`). The choice is then made over the
    grid and that point together."""
    from .ladder import TUNE
    from .report import lr_choice

    tune = ladder or TUNE
    records = _tuning_records_with_lr(out, lr_from, records_dir)
    grid, beyond, missing = _tuning_state(records, tune)
    if grid is None or missing is not None:
        return None
    allowed = {m: [*tune.lrs, *(lr for lr, ms in beyond.items() if m in ms)] for m in tune.objectives}
    kept = [r for r in records if any(math.isclose(r["lr"], lr) for lr in allowed.get(r["method"], ()))]
    return lr_choice(kept)


def tuning_extension(out: Path, tune: Ladder, args: argparse.Namespace) -> Ladder | None:
    """The tuning runs still to make past the grid's edges (one ladder per call, the first point still
    incomplete), or ``None`` while the grid itself is incomplete or nothing past it is needed."""
    _, _, missing = _tuning_state(_tuning_records_with_lr(out, args.lr_from, args.records), tune)
    if missing is None:
        return None
    lr, methods = missing
    objectives = methods if BASELINE in methods else (BASELINE, *methods)  # a plan needs the baseline
    return dataclasses.replace(tune, objectives=objectives, lrs=(lr,))


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
    skip = recorded_runs(args.records, phase)
    plan = build_plan(where, ladder, workers=args.workers, overrides=args.overrides, skip=skip)
    if phase == "tune" and all(job.done() for job in plan.runs):
        extension = tuning_extension(out, ladder, args)
        if extension is not None:  # the grid is done and some method's best is an edge: one point past it
            plan = build_plan(where, extension, workers=args.workers, overrides=args.overrides, skip=skip)
            summary += (f"; past the grid's edge: lr {extension.lrs[0]:g} for "
                        f"{','.join(m for m in extension.objectives)}")  # fmt: skip
    return plan, summary
