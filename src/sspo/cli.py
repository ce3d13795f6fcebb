"""The ``sspo`` command line. Arguments are parsed before torch is imported, so ``--help`` is fast.

    sspo demo [--task math|code] [--out DIR] [--control]   tiny model, warm start, SSPO, before/after table
    sspo train --config FILE [section.field=value ...]
    sspo resume RUN_DIR [--allow-changes] [section.field=value ...]
    sspo eval --model PATH_OR_RUN_DIR [--task ...] [--pass-k K]

Expected failures (a bad value, a model or data set that cannot be had, no GPU for a GPU preset, a
failing verifier) print one line ``sspo <command>: error: <field>: <what to do>`` and exit with status 2.
Ctrl-C prints one line (the step, and how to continue) and exits with status 130.
    sspo compare --objectives sspo,grpo --seeds 3 --preset tiny
    sspo stress [--quick]
    sspo study bias-variance [--out DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train the built-in tiny model with SSPO on CPU in minutes",
                       description="Build the tiny model, warm-start it (cached), evaluate, train with SSPO, "
                                   "evaluate again; print a before/after table and write plots.")  # fmt: skip
    p.add_argument("--task", default="math", choices=("math", "code"),
                   help="math: arithmetic word problems (default); code: write a function from examples, "
                        "rewarded by running hidden tests in the sandbox")  # fmt: skip
    p.add_argument("--out", default=None, help="run directory (default: runs/demo[-code]-<date>-<time>, a new one each run)")
    p.add_argument("--objective", default=None, help="objective to train with (default: the preset's, sspo)")
    p.add_argument("--control", action="store_true",
                   help="also continue supervised training from the same start for the same wall time")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="config overrides section.field=value")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train with a YAML config and overrides")
    p.add_argument("--config", default=None, help="YAML preset (see configs/); default: built-in defaults")
    p.add_argument("overrides", nargs="*", help="config overrides section.field=value, e.g. objective.name=grpo")


def _add_resume(sub) -> None:
    p = sub.add_parser("resume", help="continue a run from its last intact checkpoint",
                       description="Continue a run exactly from its newest checkpoint that reads back whole "
                                   "(newer, truncated ones are skipped and set aside). Overrides may change how "
                                   "long it trains, checkpointing, evaluation sizes and resources; changing what "
                                   "it was trained with (objective, task, model, seed, optimizer, rollout or "
                                   "update shapes) needs --allow-changes. A complete run is left as it is.")  # fmt: skip
    p.add_argument("run_dir", help="run directory holding config.yaml and checkpoints/")
    p.add_argument("overrides", nargs="*", help="overrides (e.g. steps=200 to extend a run)")
    p.add_argument("--allow-changes", action="store_true",
                   help="allow overrides that change what the run was trained with (e.g. optim.lr=1e-4 after a "
                        "divergence, objective.name=grpo); the resumed run is then no longer a continuation")  # fmt: skip


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="greedy accuracy (pass rate for code) and pass@k of a model on held-out problems")
    p.add_argument("--model", required=True, help="'tiny', a model directory, a run directory or a hub id")
    p.add_argument("--task", default=None,
                   help="synthetic | gsm8k | deepmath | synthetic_code | humaneval | leetcode (default: a run "
                        "directory's task, else synthetic)")  # fmt: skip
    p.add_argument("--path", default=None, help="hub id or local data path of a data-set task (default: a run's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option, e.g. --option difficulties=Easy (repeatable; see sspo.tasks.task_options)")
    p.add_argument("--reward-timeout", type=float, default=None,
                   help="seconds per answer comparison, or per program for code (default: 1 for math, 5 for code)")
    p.add_argument("--split", default=None, help="split evaluated (default: a run's evaluation split, else test)")
    p.add_argument("--num-problems", type=int, default=200, help="problems evaluated (default: %(default)s)")
    p.add_argument("--pass-k", type=int, default=0, help="also pass@k with k samples (default: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest response (default: %(default)s)")
    p.add_argument("--template", default=None, help="prompt template: auto, chat, plain, raw (default: a run's, else auto)")
    p.add_argument("--seed", type=int, default=0)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="every objective x seed, aggregated with controls (see docs/compare.md)")
    from .experiments.compare.cli import add_arguments

    add_arguments(p)


def _add_stress(sub) -> None:
    p = sub.add_parser("stress", help="the off-policy stress ladder with paired statistics (see docs/stress.md)")
    from .experiments.stress.cli import add_arguments

    add_arguments(p)


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="exact studies of the objectives")
    studies = p.add_subparsers(dest="study", required=True)
    from .experiments.bias_variance.study import add_arguments

    add_arguments(studies.add_parser("bias-variance", help="bias and variance of each gradient estimator"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sspo", description="Soft Sequence Policy Optimization for RLVR.")
    parser.add_argument("--version", action="version", version="sspo 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_train, _add_resume, _add_eval, _add_compare, _add_stress, _add_study):
        add(sub)
    return parser


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _cmd_train(args) -> int:
    from .trainer import load_config, train

    config = load_config(args.config, args.overrides)
    summary = train(config)
    print(json.dumps({k: summary[k] for k in ("objective", "steps", "accuracy_before", "accuracy_after")}, indent=1))
    return 0


def _cmd_resume(args) -> int:
    from .trainer import resume

    summary = resume(args.run_dir, overrides=args.overrides, allow_changes=args.allow_changes)
    print(json.dumps({k: summary[k] for k in ("objective", "steps", "accuracy_before", "accuracy_after")}, indent=1))
    return 0


class CommandError(Exception):
    """An expected failure of a command; the message is ``<field>: <what to do>``."""


def _run_task(args) -> dict:
    """The task section of ``--model``'s ``config.yaml`` when it is a run directory whose task ``--task``
    does not replace (``{}`` otherwise): its task, data, options, split and template are the defaults."""
    import yaml

    config = Path(args.model) / "config.yaml"
    if not config.is_file():
        return {}
    task = (yaml.safe_load(config.read_text()) or {}).get("task") or {}
    return task if args.task in (None, task.get("name")) else {}


def _eval_options(args) -> dict:
    """Fill the flags a run directory provides, then ``--option KEY=VALUE`` pairs (YAML-typed values),
    checked against the task."""
    import math

    import yaml

    from .tasks import TASKS, check_task_options, task_splits

    run = _run_task(args)
    args.task = args.task or run.get("name", "synthetic")
    args.path = args.path or run.get("path")
    args.split = args.split or run.get("eval_split", "test")
    args.template = args.template or run.get("template", "auto")

    if args.task not in TASKS:
        raise CommandError(f"--task: unknown task {args.task!r}; valid: {', '.join(TASKS)}")
    if args.split not in task_splits(args.task):
        raise CommandError(f"--split: task {args.task!r} has no split {args.split!r}; valid: "
                           f"{', '.join(task_splits(args.task))}")  # fmt: skip
    options = dict(run.get("options") or {})
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--option: {item!r} must look like KEY=VALUE")
        options[key.strip()] = yaml.safe_load(raw) if raw else ""
    try:
        check_task_options(args.task, options)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"--option {exc}") from None
    from .tasks import TEMPLATES

    if args.template not in TEMPLATES:
        raise CommandError(f"--template: {args.template!r} is not one of {', '.join(TEMPLATES)}")
    for name, value, ok, allowed in (
            ("--num-problems", args.num_problems, args.num_problems >= 1, "an int >= 1"),
            ("--pass-k", args.pass_k, args.pass_k >= 0, "an int >= 0"),
            ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "an int >= 1"),
            ("--temperature", args.temperature, 0 < args.temperature < math.inf, "a finite number > 0"),
            ("--reward-timeout", args.reward_timeout, args.reward_timeout is None or 0 < args.reward_timeout < math.inf,
             "a finite number of seconds > 0")):  # fmt: skip
        if not ok:
            raise CommandError(f"{name}: {value} is out of range; must be {allowed}")
    return options


def _cmd_eval(args) -> int:
    from .models.loading import ModelUnavailableError, load_model_and_tokenizer
    from .tasks import DatasetUnavailableError, is_code_task, load_task
    from .trainer.config import check_model_source
    from .trainer.evaluate import evaluate
    from .trainer.rewards import reward_for_task

    options = _eval_options(args)
    model_path = Path(args.model)
    if (model_path / "final_model").is_dir():
        model_path = model_path / "final_model"
    name = str(model_path) if model_path.exists() else args.model
    try:
        check_model_source(name)
        model, tokenizer = load_model_and_tokenizer(name)
    except (ValueError, ModelUnavailableError) as exc:
        raise CommandError(f"--model: {str(exc).removeprefix('model: ')}") from exc
    try:
        problems = load_task(args.task, args.split, path=args.path, limit=args.num_problems, seed=args.seed + 1,
                             **options)  # fmt: skip
    except (DatasetUnavailableError, OSError, ValueError) as exc:
        raise CommandError(f"--path: {exc}") from exc
    timeout = args.reward_timeout or (5.0 if is_code_task(args.task) else 1.0)
    scorer = reward_for_task(args.task, timeout=timeout)
    try:
        metrics = evaluate(model.eval(), tokenizer, problems, scorer, max_new_tokens=args.max_new_tokens,
                           template=args.template, pass_k=args.pass_k, temperature=args.temperature,
                           seed=args.seed)  # fmt: skip
    finally:
        scorer.close()
    print(json.dumps(metrics, indent=1))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, objective=args.objective, control=args.control, overrides=args.overrides, task=args.task)
    return 0


def _cmd_compare(args) -> int:
    from .experiments.compare.cli import main

    return main(args)


def _cmd_stress(args) -> int:
    from .experiments.stress.cli import main

    return main(args)


def _cmd_study(args) -> int:
    from .experiments.bias_variance.study import main

    return main(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # overrides after a flag: `sspo resume RUN --allow-changes optim.lr=1e-4`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _main(args)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line and status 130 (128 + SIGINT), never a traceback
        print(f"sspo {args.command}: {_interrupted(args, exc)}", file=sys.stderr)
        return 130


def _interrupted(args, exc: KeyboardInterrupt) -> str:
    """What an interrupted command says: the trainer's message (the step, how to continue), else where it was."""
    if str(exc):  # a TrainingInterrupted
        return str(exc)
    if args.command == "resume":
        return f"interrupted before training started; continue with: sspo resume {args.run_dir}"
    return "interrupted before training started" if args.command in ("train", "demo") else "interrupted"


def _main(args) -> int:
    _quiet_libraries()
    handlers = {"demo": _cmd_demo, "train": _cmd_train, "resume": _cmd_resume, "eval": _cmd_eval,
                "compare": _cmd_compare, "stress": _cmd_stress, "study": _cmd_study}  # fmt: skip
    from .trainer.config import ConfigError
    from .trainer.loop import TrainingError

    try:
        return handlers[args.command](args)
    except (ConfigError, TrainingError, CommandError, FileExistsError, FileNotFoundError) as exc:
        print(f"sspo {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    """The message on one line (a loader's or the hub's message may hold newlines)."""
    return " ".join(message.split())


if __name__ == "__main__":
    raise SystemExit(main())
