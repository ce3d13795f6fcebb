"""``sspo stress``: the off-policy stress ladder, resumable and parallel like ``sspo compare``.

    sspo stress --quick                          # 3 levels x 3 methods x 2 seeds, <= 20 min on 2 cores
    nohup sspo stress --out runs/stress --max-minutes 110 > stress.out 2>&1 &   # the powered plan, one chunk
    sspo stress --phase tune                     # one phase: tune, main, common-lr, scale
    sspo stress --report-only --out runs/stress  # re-aggregate what is there

This module imports nothing heavy, so ``sspo stress --help`` is fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_arguments", "main"]

PHASE_ORDER = ("tune", "main", "common-lr", "scale")


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train every method at every level of the off-policy stress ladder, several seeds each "
                          "(paired: same warm start, problems and first rollout per seed): learning rates tuned on "
                          "seeds of their own, the main comparison, a common-lr table and a scale check; write CSV "
                          "tables, stress.md, plots and report.html.")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="levels L0,L3,L4 x grpo,sspo,sapo x 2 seeds x 30 steps")
    parser.add_argument("--phase", default="all", choices=("all", *PHASE_ORDER),
                        help="which part of the powered plan to run (default: all, in order)")  # fmt: skip
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: the phase's; see --dry-run)")
    parser.add_argument("--objectives", default=None,
                        help="comma-separated methods: any of sspo.OBJECTIVES, sspo-matched, grpo-tis; must include "
                             "grpo (default: the phase's)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: the phase's)")
    parser.add_argument("--sweeps", default=None, help="τ sweeps: sspo-tau, sspo-ratio, sapo-tau (default: none)")
    parser.add_argument("--sweep-levels", default=None, help="levels the sweeps run in (default: L3)")
    parser.add_argument("--lr-from", default=None,
                        help="a stress_lr.csv of tuning runs to choose each method's lr from (default: the tuning "
                             "phase under --out)")  # fmt: skip
    parser.add_argument("--records", default=None,
                        help="a directory of committed per-run CSVs (<phase>_runs.csv): runs found there are not "
                             "run again and join the report")  # fmt: skip
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no run after this many minutes (a chunk; run the command again to continue)")
    parser.add_argument("--out", default="runs/stress", help="output directory (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs at once, each a subprocess with threads=1 (default 0: one per CPU core)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--report-only", action="store_true", help="only re-aggregate the runs under --out")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides applied to every run")


def ladder_from_args(args: argparse.Namespace, phase: str | None = None):
    """The ladder of ``phase`` (``None``: ``--quick``) with the command line's changes."""
    import dataclasses

    from .ladder import PHASES, QUICK

    base = QUICK if phase is None else PHASES[phase]
    changes = {"levels": _names(args.levels), "objectives": _names(args.objectives), "seeds": args.seeds,
               "sweeps": _names(args.sweeps), "sweep_levels": _names(args.sweep_levels)}  # fmt: skip
    ladder = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    if ladder.sweeps and not ladder.sweep_levels:
        ladder = dataclasses.replace(ladder, sweep_levels=("L3",))
    if args.seeds is not None and ladder.headline_seeds:
        ladder = dataclasses.replace(ladder, headline_seeds=max(ladder.headline_seeds, args.seeds))
    return ladder


def _phases(args: argparse.Namespace) -> list[str | None]:
    if args.quick:
        return [None]
    return list(PHASE_ORDER) if args.phase == "all" else [args.phase]


def _run_phase(out: Path, phase: str | None, args: argparse.Namespace, summaries: list[str], failed: list[str],
               t0: float, stop_s: float | None) -> bool:  # fmt: skip
    """Plan and run one phase; ``True`` when it is complete (or only planned, with ``--dry-run``). The
    tuning phase plans again once its grid is done: the runs past the grid's edges
    (:func:`phases.tuning_extension`), until none is left."""
    from ..runner import execute_plan
    from .phases import phase_plan

    summaries.append("")
    while True:
        plan, summaries[-1] = phase_plan(out, phase, ladder_from_args(args, phase), args)
        if plan is None:  # waits for an earlier phase
            print(summaries[-1], flush=True)
            return False
        pending = [job for job in plan.runs if not job.done()]
        if args.dry_run or pending or phase != "tune":
            print(plan.describe(), flush=True)
        if args.dry_run:
            return True
        if not pending:
            return True
        left = None if stop_s is None else stop_s - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            print(f"stress: the chunk limit ({args.max_minutes:g} min) is spent; run again to continue")
            return False
        failed += execute_plan(plan, stop_after_s=left)
        if any(not job.done() for job in plan.runs):
            return False
        if phase != "tune":
            return True


def main(args: argparse.Namespace) -> int:
    from .report import markdown_table, write_report

    out = Path(args.out)
    failed: list[str] = []
    t0 = time.perf_counter()
    stop_s = args.max_minutes * 60 if args.max_minutes else None
    summaries = []
    if not args.report_only:
        for phase in _phases(args):
            if not _run_phase(out, phase, args, summaries, failed, t0, stop_s):
                break  # an unfinished phase: the later ones need it (chosen lrs) or wait their turn
        if args.dry_run:
            return 0
        print(f"stress: {(time.perf_counter() - t0) / 60:.1f} min" + (f"; {len(failed)} job(s) failed: "
              f"{', '.join(failed)}" if failed else ""))  # fmt: skip
    result = write_report(out, summary="; ".join(summaries), records=args.records)
    print(markdown_table(result["table"]))
    print("\n".join(str(p) for p in result["files"]))
    return 1 if failed else 0
