"""``sspo demo``: the built-in default, end to end on a CPU.

Builds the tiny Qwen2 model and character tokenizer, warm-starts it by supervised fine-tuning on the
synthetic task's worked solutions (cached), evaluates greedy accuracy on held-out problems, trains
with SSPO, evaluates again, prints a before/after table, and writes plots and ``summary.json``.
With ``--control`` it also continues supervised training from the same warm start for the same
wall time, the fair control for the RL gain.

``--task code`` does the same on the synthetic coding task (write a one-line function from
input/output examples; preset ``demo-code``): the reward runs each program against hidden tests in
the sandbox, and the accuracies are held-out pass rates.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from .trainer import load_config, train
from .trainer.config import ConfigError, TrainConfig

PRESET = "demo"
PRESETS = {"math": PRESET, "code": "demo-code"}
"""The preset of each ``sspo demo --task``."""


def supervised_control(config: TrainConfig, seconds: float) -> dict:
    """Continue supervised training from the cached warm start for ``seconds``; evaluate it."""
    from .tasks import load_task
    from .trainer.evaluate import evaluate
    from .trainer.rewards import task_reward
    from .trainer.sft import sft_train
    from .trainer.warm_start import prepare_model, sft_pairs

    model, tokenizer, _ = prepare_model(config)
    t = config.task
    problems = load_task(t.name, t.train_split, path=t.path, limit=t.train_size, seed=config.seed, **t.options)
    pairs = sft_pairs(problems, tokenizer, t.template)
    w = config.warm_start
    start = time.perf_counter()
    # continue at the rate the warm start ended with (a decaying schedule ends at 0.1 × lr) for the same wall time
    final_lr = w.lr if w.schedule == "constant" else w.lr * 0.1
    result = sft_train(model, tokenizer, pairs, steps=10**6, batch_size=w.batch_size, lr=final_lr,
                       seed=config.seed + 1, time_budget_s=seconds, warmup=0, schedule="constant")  # fmt: skip
    eval_problems = load_task(t.name, t.eval_split, path=t.path, limit=config.eval.num_problems,
                              seed=config.seed + 1, **t.options)  # fmt: skip
    scorer = task_reward(config)
    try:
        metrics = evaluate(model.eval(), tokenizer, eval_problems, scorer,
                           max_new_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens,
                           template=t.template, batch_size=config.eval.batch_size)  # fmt: skip
    finally:
        scorer.close()
    return {"accuracy": metrics["eval/accuracy"], "steps": result["steps"], "seconds": time.perf_counter() - start}


def _table(rows: list[tuple[str, str, str]], measure: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sspo demo: held-out greedy {measure}")
    for col in ("model", measure, "note"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def run_demo(out: str | None = None, *, objective: str | None = None, control: bool = False, overrides=(),
             task: str = "math") -> dict:
    """Run the demo of ``task`` (``math`` or ``code``, :data:`PRESETS`) into ``out`` (default
    ``runs/demo-<time>``, ``runs/demo-code-<time>``); returns the summary."""
    if task not in PRESETS:
        raise ConfigError(f"--task: {task!r} is not one of {', '.join(PRESETS)}")
    wall0 = time.perf_counter()
    out = out or time.strftime(f"runs/{PRESETS[task]}-%Y%m%d-%H%M%S")
    extra = [f"out_dir={out}"] + ([f"objective.name={objective}"] if objective else []) + list(overrides)
    config = load_config(PRESETS[task], extra)
    result = train(config)
    measure = "pass rate" if task == "code" else "accuracy"
    summary = {
        "objective": config.objective.name,
        "accuracy_before": result["accuracy_before"],
        "accuracy_after": result["accuracy_after"],
        "gain_points": 100 * (result["accuracy_after"] - result["accuracy_before"]),
        "eval_problems": config.eval.num_problems,
        "steps": result["steps"],
        "train_seconds": result["train_seconds"],
        "warm_start": result["warm_start"],
        "plot": result["plot"],
    }
    rows = [
        ("warm start (supervised)", f"{summary['accuracy_before']:.3f}", f"{config.eval.num_problems} held-out problems"),
        (f"+ {config.objective.name} RL", f"{summary['accuracy_after']:.3f}",
         f"{result['steps']} steps, {result['train_seconds']:.0f} s"),
    ]  # fmt: skip
    if control:
        ctrl = supervised_control(copy.deepcopy(config), result["train_seconds"])
        summary["control_sft"] = ctrl
        rows.append(("+ supervised (control)", f"{ctrl['accuracy']:.3f}", f"{ctrl['steps']} steps, {ctrl['seconds']:.0f} s"))
    summary["wall_seconds"] = time.perf_counter() - wall0
    Path(out, "summary.json").write_text(json.dumps(summary, indent=1))
    _table(rows, measure)
    print(f"plots: {result['plot']}\nsummary: {Path(out, 'summary.json')}")
    return summary
