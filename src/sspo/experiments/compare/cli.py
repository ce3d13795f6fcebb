"""``sspo compare``: every objective × setting × seed from one preset, two controls, one report.

    sspo compare --objectives sspo,grpo,gspo,gmpo,sapo --seeds 3 --preset tiny
    nohup sspo compare --preset tiny > compare.out 2>&1 &        # in the background; resumable
    sspo compare --report-only --out runs/compare                 # re-aggregate what is there

Definitions of every column, the settings and the controls: ``docs/compare.md``. This module imports
nothing heavy, so ``sspo compare --help`` is fast.
"""

from __future__ import annotations

import argparse
import time

__all__ = ["add_arguments", "main"]

DEFAULT_OBJECTIVES = "sspo,grpo,gspo,gmpo,sapo"


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train every objective x setting x seed from one preset (resumable, parallel workers), "
                          "run the no-training and supervised controls, and write results.csv, results.md, "
                          "plots and a self-contained report.html.")  # fmt: skip
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES, help="comma-separated (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per objective and setting (default: 3)")
    parser.add_argument("--preset", default="tiny",
                        help="trainer preset (built-in name or YAML); per-objective siblings such as "
                             "qwen2.5-0.5b-gsm8k-grpo are used when they exist (default: %(default)s)")  # fmt: skip
    parser.add_argument("--settings", default="onpolicy,offpolicy",
                        help="stress settings: onpolicy, offpolicy, preset (default: %(default)s)")  # fmt: skip
    parser.add_argument("--ablations", default="",
                        help="SSPO-only extra runs in the offpolicy setting: gates, tau (default: none)")  # fmt: skip
    parser.add_argument("--ablation-seeds", type=int, default=None, help="seeds of the ablation runs (default: --seeds)")
    parser.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                        help="run the supervised control (the no-training control is every run's step 0)")  # fmt: skip
    parser.add_argument("--warm-start", default="shared", choices=("shared", "per-seed"),
                        help="shared: one warm start (seed 0) is every seed's starting checkpoint; per-seed: each "
                             "seed builds its own (default: %(default)s)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=None,
                        help="training seconds per run (default: the preset's time_budget_s; tiny: 180)")  # fmt: skip
    parser.add_argument("--out", default="runs/compare", help="output directory (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs at once, each a subprocess with threads=1 (default 0: 1 on a GPU, else one "
                             "per CPU core)")  # fmt: skip
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="accuracy for the steps-to-target column (default: no-training accuracy + 0.05)")  # fmt: skip
    parser.add_argument("--spike-k", type=float, default=6.0, help="spike threshold in robust SDs (default: 6)")
    parser.add_argument("--spike-window", type=int, default=20, help="trailing window of the spike rule (default: 20)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--report-only", action="store_true", help="only re-aggregate the runs under --out")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides applied to every run")


def main(args: argparse.Namespace) -> int:
    from .report import write_report

    summary = (f"preset {args.preset}; objectives {args.objectives}; settings {args.settings}; "
               f"seeds {args.seeds}; ablations {args.ablations or 'none'}")  # fmt: skip
    report_kwargs = {"target": args.target_accuracy, "spike_window": args.spike_window, "spike_k": args.spike_k}
    if args.report_only:
        result = write_report(args.out, summary="", **report_kwargs)
        _print_outputs(result)
        return 0
    from .plan import build_plan, execute_plan

    plan = build_plan(
        args.out, preset=args.preset, objectives=_names(args.objectives), seeds=args.seeds,
        settings=_names(args.settings), ablations=_names(args.ablations), ablation_seeds=args.ablation_seeds,
        controls=args.controls, budget_s=args.budget_s, workers=args.workers, overrides=args.overrides,
        warm_start=args.warm_start,
    )  # fmt: skip
    print(plan.describe(), flush=True)
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    failed = execute_plan(plan)
    from ..runner import run_bound

    bound = run_bound(plan.runs[0].config) if plan.runs else "no runs"
    summary += f"; each run {bound}; {plan.workers} worker(s)"
    result = write_report(args.out, summary=summary, **report_kwargs)
    _print_outputs(result)
    print(f"compare: {(time.perf_counter() - t0) / 60:.1f} min" + (f"; {len(failed)} job(s) failed: "
          f"{', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


def _print_outputs(result: dict) -> None:
    from .report import markdown_table

    print(markdown_table(result["table"]))
    print("\n".join(str(p) for p in result["files"]))
