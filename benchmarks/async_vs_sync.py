"""Samples per second of the asynchronous trainer (``async.workers > 0``) vs the synchronous one, on the
same machine and the same shapes, in one run.

    python benchmarks/async_vs_sync.py [--rounds 5] [--steps 40] [--warmup 2] [--workers 1 [2]]
                                       [--out docs/results/async_vs_sync] [--quick] [--dry-run]

Shapes: the ``stress`` preset as it is (``configs/stress.yaml``, which includes ``demo.yaml``): the cached
demo warm start of the built-in tiny model (~0.8M-parameter Qwen2, character tokenizer), the synthetic
task, 8 prompts x 8 samples = 64 completions of at most 40 new tokens at temperature 0.7 per step, SSPO,
2 mini-batches x 1 epoch = 2 optimizer updates per step, float32 on the CPU (``device=cpu
dtype=float32`` are set: the workers sample on the CPU). Only what a throughput measurement needs is
changed: ``steps`` (``--steps``), no evaluation during training (``eval.every=0``; the evaluations before
and after training run on 16 problems and are not timed), one checkpoint at the end
(``checkpoint_every`` = steps), ``progress=false``. Trailing ``section.field=value`` arguments override
every run (e.g. ``update.mini_batches=4``, the ladder's L1); the report states the shapes it ran.

Configurations (each a fresh process running one :class:`sspo.trainer.Trainer`):

- ``sync``: ``async.workers=0``, ``threads`` = the cores this process may use (``--cores``; 2 on the
  development machine): the baseline of the ratios. ``sync-t1``: the same on one thread, the demo
  preset's own ``threads: 1``. On an idle 2-core machine two threads were faster (smoke runs: 221 vs 146
  samples/s), but with another job holding a core they fell far behind (9 vs 107), so async is also
  compared with the faster synchronous setting of each round. ``--sync-threads`` sets the list
  (default: the cores, then 1).
- ``async-w<W>-s<S>``: ``async.workers=W``, ``async.max_staleness=S``, ``async.on_stale=wait``; the
  learner gets ``threads = max(1, cores - W)`` and each worker one torch thread (fixed by the trainer:
  ``WorkerSpec(torch_threads=1)``), so learner + workers use the machine's cores once, not more
  (``W >= cores`` oversubscribes them; the table says so). By default ``W = 1`` with ``S`` in
  ``--staleness`` (0 2): ``S = 0`` is the synchronous sequence in another process (the overhead of the
  machinery: same batches, no overlap); ``S = 2`` = one step's updates lets the worker generate step
  ``s+1`` while the learner trains on step ``s`` (full overlap). ``--workers 1 2`` adds ``W = 2`` at every
  ``S > 0`` (at ``S = 0`` a second worker could only idle).

Order: ``--rounds`` rounds, each running every configuration once, the order rotated by one each round,
so load from other jobs falls on every configuration alike.

Measurement: steady state only. The wall-clock time of each step's ``metrics.jsonl`` row being written
is recorded in the run's process; a configuration's samples/s is (rows sampled in steps
``warmup+1..N``) / (wall time from the end of step ``warmup`` to the end of step ``N``). That excludes
the model's loading, the evaluation before training, the workers' spawn (inside step 1's wait) and the
first ``--warmup`` steps, and counts everything the learner does between steps (logging) in both modes
alike. Wall-clock, not the per-step ``throughput/samples_per_s`` (reported too, as a median), since in
async mode the next rollout overlaps this step's updates. A round's ratio = async samples/s / ``sync``
samples/s of that round (and / the faster of the synchronous settings of that round); the report gives
every round's ratio, their median and range, the mean measured staleness (``async/staleness_mean`` over the counted steps), the learner's mean wait for a
batch per step (``async/learner_wait_s``) and the workers' mean idle time (``async/worker_wait_s``), and
the mean completion length (comparable work: at ``S > 0`` the policy sees older samples, so lengths may
drift slightly apart).

Writes ``<out>.json`` (every run's figures) and ``<out>.md`` (the tables); progress goes to stderr. The
last line on stdout is ``async_vs_sync <best median ratio> (<config>)``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PRESET = "stress"
DEFAULT_OUT = "docs/results/async_vs_sync"
QUICK_OUT = "runs/async_vs_sync-quick"
EVAL_PROBLEMS = 16


@dataclass(frozen=True)
class Setting:
    """One configuration of the comparison."""

    name: str
    workers: int
    max_staleness: int
    threads: int
    """The learner's torch threads (each worker has one)."""

    def overrides(self) -> list[str]:
        return [f"threads={self.threads}", f"async.workers={self.workers}",
                f"async.max_staleness={self.max_staleness}", "async.on_stale=wait"]  # fmt: skip

    @property
    def cores_used(self) -> int:
        return self.threads + self.workers


@dataclass(frozen=True)
class Run:
    """One run of the plan: a setting in a round."""

    round: int
    setting: Setting
    steps: int
    warmup: int
    objective: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def overrides(self, out_dir: str | Path) -> list[str]:
        items = [f"steps={self.steps}", "eval.every=0", f"eval.num_problems={EVAL_PROBLEMS}",
                 f"eval.batch_size={EVAL_PROBLEMS}", f"checkpoint_every={self.steps}", "progress=false",
                 "time_budget_s=null", "device=cpu", "dtype=float32", f"out_dir={out_dir}",
                 *self.setting.overrides()]  # fmt: skip
        if self.objective:
            items.append(f"objective.name={self.objective}")
        return [*items, *self.extra]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every configuration once")
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run left out of the measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="rollout worker counts to compare")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 2], help="async.max_staleness values")
    parser.add_argument("--cores", type=int, default=0, help="cores to share out (0: those this process may use)")
    parser.add_argument("--sync-threads", type=int, nargs="+", default=None,
                        help="threads of the synchronous runs (default: the cores, then 1); the first is the baseline")
    parser.add_argument("--objective", default=None, help="objective.name (default: the preset's, sspo)")
    parser.add_argument("--out", default=None, help=f"path stem of the .json and .md (default {DEFAULT_OUT}; "
                                                    f"{QUICK_OUT} with --quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 6 steps (1 warm-up)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one run, in its own process
    parser.add_argument("override", nargs="*", help="extra section.field=value overrides for every run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 6, 1
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by at least 2")
    if args.rounds < 1 or args.warmup < 1 or any(w < 1 for w in args.workers) or any(s < 0 for s in args.staleness):
        parser.error("--rounds, --warmup and --workers must be >= 1 (step 1 holds the workers' spawn), --staleness >= 0")
    args.cores = args.cores or available_cores()
    return args


def settings(args: argparse.Namespace) -> list[Setting]:
    """The configurations, baseline (the first ``sync``) first."""
    sync_threads = args.sync_threads or ([args.cores, 1] if args.cores > 1 else [1])
    out = [Setting("sync" if i == 0 else f"sync-t{t}", 0, 0, t) for i, t in enumerate(sync_threads)]
    for w in sorted(set(args.workers)):
        for s in sorted(set(args.staleness)):
            if w > 1 and s == 0:
                continue  # at max_staleness 0 a second worker can only idle
            out.append(Setting(f"async-w{w}-s{s}", w, s, max(1, args.cores - w)))
    return out


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run in order: ``rounds`` rounds of every setting, the order rotated by one each round."""
    table = settings(args)
    runs = []
    for r in range(args.rounds):
        k = r % len(table)
        for s in table[k:] + table[:k]:
            runs.append(Run(r, s, args.steps, args.warmup, args.objective, tuple(args.override)))
    return runs


# ---------------------------------------------------------------------------------------------- one run
def run_one(run: Run) -> dict:
    """Train ``run`` in this process; the wall-clock time of each step's metrics row, and its figures."""
    from sspo.trainer import Trainer, load_config
    from sspo.trainer.metrics_log import read_metrics

    with tempfile.TemporaryDirectory(prefix="async_vs_sync-") as tmp:
        config = load_config(PRESET, run.overrides(Path(tmp) / "run"))
        trainer = Trainer(config, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
        stamps: dict[int, float] = {}
        logged = trainer.logger.log

        def log(step, metrics):
            logged(step, metrics)
            if "time/step_s" in metrics:
                stamps[step] = time.perf_counter()

        trainer.logger.log = log
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
        rows = [r for r in read_metrics(Path(tmp) / "run") if "time/step_s" in r]
        timeline = (Path(tmp) / "run" / "plots" / "timeline.png").is_file()
    return measure(rows, stamps, run.warmup) | {"run_wall_s": wall, "timeline_png": timeline}


def measure(rows: list[dict], stamps: dict[int, float], warmup: int) -> dict:
    """Steady-state figures of one run from its step rows and the wall-clock time each was logged."""
    counted = [r for r in rows if r["step"] > warmup]
    last = max(r["step"] for r in rows)
    samples = [round(r["throughput/samples_per_s"] * r["time/step_s"]) for r in counted]
    seconds = stamps[last] - stamps[warmup]

    def mean(key: str) -> float | None:
        values = [r[key] for r in counted if key in r]
        return statistics.fmean(values) if values else None

    return {
        "counted_steps": len(counted), "samples": sum(samples), "seconds": seconds,
        "samples_per_s": sum(samples) / seconds,
        "tokens_per_s": sum(r["rollout/tokens"] for r in counted) / seconds,
        "step_samples_per_s_median": statistics.median(r["throughput/samples_per_s"] for r in counted),
        "step_s_mean": mean("time/step_s"), "rollout_s_mean": mean("time/rollout_s"),
        "update_s_mean": mean("time/update_s"), "length_mean": mean("response/length_mean"),
        "reward_mean": mean("reward/mean"), "staleness_mean": mean("async/staleness_mean"),
        "staleness_max": max((r["async/staleness_max"] for r in counted if "async/staleness_max" in r), default=None),
        "dropped": sum(r.get("async/dropped", 0.0) for r in counted),
        "learner_wait_s_mean": mean("async/learner_wait_s"), "worker_wait_s_mean": mean("async/worker_wait_s"),
    }  # fmt: skip


def child(spec: str) -> None:
    data = json.loads(spec)
    run = Run(data["round"], Setting(**data["setting"]), data["steps"], data["warmup"], data["objective"],
              tuple(data["extra"]))  # fmt: skip
    print(json.dumps(run_one(run)))


def spawn(run: Run) -> dict:
    """``run`` in a fresh interpreter (its stderr passes through); its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(run))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run.setting.name} (round {run.round}) failed with status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report
def summarise(results: list[dict], table: list[Setting], rounds: int) -> dict:
    """Per setting: samples/s per round, median and range; per async setting: its ratio to the baseline
    in each round, their median and range, mean staleness and waits."""
    base = table[0].name
    syncs = [s.name for s in table if not s.workers]
    by = {(r["round"], r["setting"]["name"]): r["result"] for r in results}
    out = {}
    for s in table:
        runs = [by[(k, s.name)] for k in range(rounds) if (k, s.name) in by]
        if not runs:
            continue
        sps = [r["samples_per_s"] for r in runs]
        entry = {
            "setting": asdict(s), "cores_used": s.cores_used, "samples_per_s": sps,
            "samples_per_s_median": statistics.median(sps), "samples_per_s_min": min(sps),
            "samples_per_s_max": max(sps),
            "step_samples_per_s_median": statistics.median(r["step_samples_per_s_median"] for r in runs),
            "length_mean": statistics.fmean(r["length_mean"] for r in runs),
        }  # fmt: skip
        if s.name != base:
            ratios = [by[(k, s.name)]["samples_per_s"] / by[(k, base)]["samples_per_s"]
                      for k in range(rounds) if (k, s.name) in by and (k, base) in by]  # fmt: skip
            entry.update({"ratio_to_" + base: ratios, "ratio_median": statistics.median(ratios),
                          "ratio_min": min(ratios), "ratio_max": max(ratios)})  # fmt: skip
        if s.workers and len(syncs) > 1:  # against the faster synchronous setting of each round
            ratios = [by[(k, s.name)]["samples_per_s"] / max(by[(k, n)]["samples_per_s"] for n in syncs)
                      for k in range(rounds) if (k, s.name) in by and all((k, n) in by for n in syncs)]  # fmt: skip
            entry.update({"ratio_to_best_sync": ratios, "best_sync_ratio_median": statistics.median(ratios),
                          "best_sync_ratio_min": min(ratios), "best_sync_ratio_max": max(ratios)})  # fmt: skip
        if s.workers:
            for key in ("staleness_mean", "learner_wait_s_mean", "worker_wait_s_mean"):
                entry[key] = statistics.fmean(r[key] for r in runs)
            entry["staleness_max"] = max(r["staleness_max"] for r in runs)
            entry["dropped"] = sum(r["dropped"] for r in runs)
        out[s.name] = entry
    return out


def _f(x, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    m, summary = report["meta"], report["summary"]
    base = next(iter(summary))
    smoke = " **A smoke run (`--quick`): too short to read as a measurement.**" if m["quick"] else ""
    lines = [
        "# Asynchronous vs synchronous trainer: samples/s", "",
        f"`{m['command']}` on {m['cores']} cores ({m['machine']}), torch {m['torch']}, {m['date']}; load average "
        f"{m['load_before']} before, {m['load_after']} after.{smoke}", "",
        f"The `{m['preset']}` preset's shapes ({_shape(m['shape'])}); {m['rounds']} round(s), each running every configuration once in a rotated order; "
        f"each run {m['steps']} steps, of which steps {m['warmup'] + 1}..{m['steps']} are timed (wall clock from "
        f"the end of step {m['warmup']} to the end of the last; the workers' spawn and the first steps are left "
        "out). Learner threads + one thread per worker = the cores used. Ratio: the configuration's samples/s "
        f"over `{base}`'s in the same round, median (min–max over the rounds); the faster sync: over the faster "
        "synchronous configuration of that round. Staleness: optimizer updates "
        "between the weights a batch was sampled with and those it was first trained on (mean over the timed "
        "steps). Waits: seconds per step the learner waited for its batch, and a worker idled before it.", "",
        "| configuration | workers | max_staleness | learner threads | cores used | samples/s median (min–max) "
        f"| per-step samples/s | ratio to `{base}` | ratio to the faster sync | staleness mean (max) "
        "| learner wait s | worker wait s | mean length |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, e in summary.items():
        s = e["setting"]
        ratio = "1 (baseline)" if name == base else f"{e['ratio_median']:.2f} ({e['ratio_min']:.2f}–{e['ratio_max']:.2f})"
        best = ("–" if "best_sync_ratio_median" not in e else
                f"{e['best_sync_ratio_median']:.2f} ({e['best_sync_ratio_min']:.2f}–{e['best_sync_ratio_max']:.2f})")
        stale = f"{e['staleness_mean']:.2f} ({e['staleness_max']:.0f})" if s["workers"] else "–"
        over = " (oversubscribed)" if e["cores_used"] > m["cores"] else ""
        lines.append(
            f"| `{name}` | {s['workers']} | {s['max_staleness'] if s['workers'] else '–'} | {s['threads']} | "
            f"{e['cores_used']}{over} | {e['samples_per_s_median']:.1f} ({e['samples_per_s_min']:.1f}–"
            f"{e['samples_per_s_max']:.1f}) | {e['step_samples_per_s_median']:.1f} | {ratio} | {best} | {stale} | "
            f"{_f(e.get('learner_wait_s_mean'), '.3f')} | {_f(e.get('worker_wait_s_mean'), '.3f')} | "
            f"{e['length_mean']:.1f} |"
        )  # fmt: skip
    names = [n for n in summary if n != base]
    if names:
        lines += ["", f"Ratio to `{base}` in each round:", "",
                  "| round | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---:|" + "---:|" * len(names)]  # fmt: skip
        for k in range(m["rounds"]):
            cells = []
            for n in names:
                ratios = summary[n]["ratio_to_" + base]
                cells.append(f"{ratios[k]:.2f}" if k < len(ratios) else "–")
            lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def shape(run: Run) -> dict:
    """What one step of every run does (from the validated config of the plan's first run)."""
    from sspo.trainer import load_config

    c = load_config(PRESET, run.overrides("runs/x"))
    return {"model": c.model, "task": c.task.name, "objective": c.objective.name, "dtype": c.dtype,
            "device": c.device, "prompts": c.rollout.prompts_per_step, "samples": c.rollout.samples_per_prompt,
            "max_new_tokens": c.rollout.max_new_tokens, "mini_batches": c.update.mini_batches,
            "epochs": c.update.epochs, "old_logprobs": c.update.old_logprobs}  # fmt: skip


def _shape(s: dict) -> str:
    return (f"{s['prompts']} prompts x {s['samples']} samples of <= {s['max_new_tokens']} tokens, "
            f"{s['mini_batches'] * s['epochs']} updates per step, {s['objective']}, model {s['model']}, "
            f"{s['dtype']} on {s['device']}")  # fmt: skip


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child)
        return
    table, runs = settings(args), plan(args)
    if args.dry_run:
        for run in runs:
            print(f"round {run.round + 1}: {run.setting.name:<14} {' '.join(run.overrides('RUN_DIR'))}")
        return
    import torch

    meta = {
        "command": " ".join(["python", "benchmarks/async_vs_sync.py", *(argv if argv is not None else sys.argv[1:])]),
        "preset": PRESET, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "quick": args.quick,
        "cores": args.cores, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "load_before": _load(),
        "objective": args.objective, "overrides": args.override, "shape": shape(runs[0]),
    }  # fmt: skip
    print(f"{len(runs)} runs: {args.rounds} round(s) x {', '.join(s.name for s in table)}; {args.steps} steps "
          f"each, {args.warmup} warm-up; {args.cores} cores", file=sys.stderr)  # fmt: skip
    results, t0 = [], time.perf_counter()
    for i, run in enumerate(runs, 1):
        result = spawn(run)
        results.append({"round": run.round, "setting": asdict(run.setting), "result": result})
        stale = f", staleness {result['staleness_mean']:.2f}" if run.setting.workers else ""
        print(f"[{i}/{len(runs)}] round {run.round + 1} {run.setting.name}: {result['samples_per_s']:.1f} samples/s "
              f"over steps {args.warmup + 1}..{args.steps}{stale} (run {result['run_wall_s']:.0f} s, "
              f"{time.perf_counter() - t0:.0f} s so far)", file=sys.stderr)  # fmt: skip
    meta["load_after"] = _load()
    report = {"meta": meta, "summary": summarise(results, table, args.rounds), "runs": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    md_path.write_text(text)
    print(text)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    key = "best_sync_ratio_median" if len(table) > 1 and table[1].workers == 0 else "ratio_median"
    ratios = {n: e[key] for n, e in report["summary"].items() if n.startswith("async") and key in e}
    if ratios:
        best = max(ratios, key=ratios.get)
        print(f"async_vs_sync {ratios[best]:.2f} ({best}, {key.removesuffix('_median')})")


if __name__ == "__main__":
    main()
