"""``sspo stress``: the off-policy stress ladder, resumable and parallel like ``sspo compare``.

    sspo stress --quick                          # 3 levels x 3 objectives x 2 seeds, <= 20 min on 2 cores
    nohup sspo stress --out runs/stress > stress.out 2>&1 &      # the full ladder, in the background
    sspo stress --report-only --out runs/stress  # re-aggregate what is there

This module imports nothing heavy, so ``sspo stress --help`` is fast.
"""

from __future__ import annotations

import argparse
import time

__all__ = ["add_arguments", "main"]


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train every objective at every level of the off-policy stress ladder, several seeds each "
                          "(paired: same warm start, problems and first rollout per seed), plus τ sweeps where the "
                          "gates are active; write stress.csv, stress.md, plots and report.html.")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="levels L0,L3,L5 x grpo,sspo,sapo x 2 seeds x 30 steps")
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: all; see --dry-run)")
    parser.add_argument("--objectives", default=None,
                        help="comma-separated, any of sspo.OBJECTIVES, must include grpo (default: grpo, gspo, gmpo, "
                             "sapo, sspo, cispo)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: 8; --quick: 2)")
    parser.add_argument("--sweeps", default=None, help="τ sweeps: sspo-tau, sspo-ratio, sapo-tau (default: all)")
    parser.add_argument("--sweep-levels", default=None, help="levels the sweeps run in (default: L3)")
    parser.add_argument("--out", default="runs/stress", help="output directory (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs at once, each a subprocess with threads=1 (default 0: one per CPU core)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--report-only", action="store_true", help="only re-aggregate the runs under --out")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides applied to every run")


def ladder_from_args(args: argparse.Namespace):
    import dataclasses

    from .ladder import FULL, QUICK

    base = QUICK if args.quick else FULL
    changes = {"levels": _names(args.levels), "objectives": _names(args.objectives), "seeds": args.seeds,
               "sweeps": _names(args.sweeps), "sweep_levels": _names(args.sweep_levels)}  # fmt: skip
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    from .report import markdown_table, write_report

    ladder = ladder_from_args(args)
    summary = (f"levels {','.join(ladder.levels)}; objectives {','.join(ladder.objectives)}; {ladder.seeds} seeds; "
               f"sweeps {','.join(ladder.sweeps) or 'none'} in {','.join(ladder.sweep_levels) or '-'}; "
               f"overrides {' '.join([*ladder.overrides, *args.overrides]) or 'none'}")  # fmt: skip
    failed: list[str] = []
    if not args.report_only:
        from ..runner import execute_plan
        from .ladder import build_plan

        plan = build_plan(args.out, ladder, workers=args.workers, overrides=args.overrides)
        print(plan.describe(), flush=True)
        if args.dry_run:
            return 0
        t0 = time.perf_counter()
        failed = execute_plan(plan)
        print(f"stress: {(time.perf_counter() - t0) / 60:.1f} min" + (f"; {len(failed)} job(s) failed: "
              f"{', '.join(failed)}" if failed else ""))  # fmt: skip
    result = write_report(args.out, summary=summary)
    print(markdown_table(result["table"]))
    print("\n".join(str(p) for p in result["files"]))
    return 1 if failed else 0
