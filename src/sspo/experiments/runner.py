"""The run matrix shared by the experiments (``sspo compare``, ``sspo stress``): jobs (warm starts,
training runs, supervised controls), a plan of them, and its resumable, parallel execution.

A job whose result file exists is skipped; a run directory with checkpoints but no
``final_metrics.json`` is resumed from its last checkpoint. Workers are ``python -m
sspo.experiments.runner JOB.json`` subprocesses (``threads=1`` each when several run at once). This
module imports torch only inside the worker and the warm-start key, so command-line ``--help`` is fast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["COST_MODEL", "Job", "Plan", "WarmStarts", "auto_workers", "estimate_plan_seconds", "estimate_run",
           "execute_plan", "objective_preset", "run_bound", "run_config"]

WARM_START_MODES = ("shared", "per-seed")
SHARED_CACHE = "warm_starts"
"""Experiment-private warm-start cache (under the output directory) holding the shared warm start under every seed's key."""

JOB_FILE = "job.json"
SFT_RESULT = "result.json"


@dataclass
class Job:
    """One unit of work: ``kind`` is ``warm_start``, ``train`` or ``sft``."""

    kind: str
    name: str
    directory: Path
    config: dict
    seed: int = 0
    setting: str = ""
    method: str = ""
    needs: list[str] = field(default_factory=list)
    """Jobs that must succeed first (a run's warm start)."""
    after: list[str] = field(default_factory=list)
    """Jobs that must finish first, successfully or not (a control's runs)."""
    links: list[Path] = field(default_factory=list)
    """A shared warm start: cache entries (one per seed) to fill with links to the built one."""

    @property
    def result_file(self) -> Path:
        if self.kind == "train":
            return self.directory / "final_metrics.json"
        if self.kind == "sft":
            return self.directory / SFT_RESULT
        return self.directory / "warm_start.json"

    def done(self) -> bool:
        return self.result_file.is_file() and all((p / "warm_start.json").is_file() for p in self.links)


@dataclass
class Plan:
    out: Path
    warm_starts: list[Job] = field(default_factory=list)
    runs: list[Job] = field(default_factory=list)
    controls: list[Job] = field(default_factory=list)
    workers: int = 1
    budget_s: float | None = None
    log_file: str = "runner.log"
    """One line per finished job, under ``out``."""

    def describe(self) -> str:
        """Human-readable plan (``--dry-run``): what bounds each run, every job, and an estimate of
        the time what is left takes (:func:`estimate_plan_seconds`)."""
        lines = [f"out: {self.out}", f"workers: {self.workers}"]
        bounds: dict[str, int] = {}
        for job in self.runs:
            text = run_bound(job.config)
            bounds[text] = bounds.get(text, 0) + 1
        if len(bounds) == 1:
            lines.append(f"each run: {next(iter(bounds))}")
        elif bounds:
            lines.append("runs end after: " + "; ".join(f"{text} ({n} runs)" for text, n in bounds.items()))
        for title, jobs in (("warm starts", self.warm_starts), ("runs", self.runs), ("controls", self.controls)):
            todo = sum(not j.done() for j in jobs)
            lines.append(f"{title}: {len(jobs)} ({todo} to do)")
            lines += [f"  {'done ' if j.done() else 'to do'} {j.name}" for j in jobs]
        lines.append(self._estimate_line())
        return "\n".join(lines)

    def _estimate_line(self) -> str:
        todo = [j for j in self.warm_starts + self.runs + self.controls if not j.done()]
        if not todo:
            return "estimated time of what is left: nothing is left to do"
        seconds = estimate_plan_seconds(self)
        if seconds is not None:
            return (f"estimated time of what is left: about {_minutes(seconds)} on {self.workers} worker(s) "
                    "(an estimate: a cost model of the built-in tiny model on one CPU thread per worker, fitted to "
                    "measured runs on 2 cores; a busy machine runs longer)")  # fmt: skip
        line = ("estimated time of what is left: no estimate (the cost model covers the built-in tiny model on a CPU "
                "only)")  # fmt: skip
        budgets = {j.config.get("time_budget_s") for j in todo if j.kind != "warm_start"}
        if budgets and None not in budgets:
            rounds = math.ceil(sum(j.kind != "warm_start" for j in todo) / max(1, self.workers))
            line += (f"; the time budgets alone take {rounds} rounds x {max(budgets):.0f} s = "
                     f"{_minutes(rounds * max(budgets))} (+ evaluations, start-up and warm starts)")  # fmt: skip
        return line


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    if minutes >= 120:
        hours, rest = divmod(round(minutes), 60)
        return f"{hours} h {rest} min"
    return f"{minutes:.0f} min" if minutes >= 10 else f"{minutes:.1f} min"


def run_bound(config: dict) -> str:
    """What ends a run of this config, in words: its steps, or its time budget or steps."""
    steps, budget = config["steps"], config.get("time_budget_s")
    if budget is None:
        return f"{steps} steps (no time budget)"
    return f"{budget:g} s of training or {steps} steps, whichever comes first (evaluation time not counted)"


# ----------------------------------------------------------------------------- estimates
COST_MODEL = {
    "start_s": 8.0,
    "rollout_s_per_token": 6e-5,
    "update_s_per_sample": 2.4e-3,
    "eval_s_per_token": 1.1e-4,
    "warm_start_s_per_example": 0.012,
}
"""Seconds of the built-in tiny model on one CPU thread per worker, two workers on 2 cores: a worker's
start-up (interpreter, torch, model, data, plots); per sampled response token (``max_new_tokens`` each);
per response and update epoch (forward and backward); per held-out problem and evaluation token
(greedy); per supervised warm-start example. Fitted to measured runs: ``sspo demo``'s RL steps (16 x 8
responses of up to 40 tokens, 2 updates: 0.62 s a step), the full stress ladder (432 runs of 60 steps of
8 x 8 responses, 7 evaluations of 200 problems: 2 h 13 min on 2 workers, the model says 2 h 18 min) and
the demo's warm start (350 steps of 32 examples: 126-141 s)."""


def _on_cpu(config: dict) -> bool:
    if config.get("device") == "cpu":
        return True
    if config.get("device") == "auto":
        import torch

        return not torch.cuda.is_available()
    return False


def estimate_run(config: dict) -> dict | None:
    """``{"train_s", "total_s"}`` one training run of ``config`` (a plain config mapping) is expected to
    take by :data:`COST_MODEL`: steps or the time budget, whichever ends it first, plus evaluations and
    start-up; ``None`` for a model other than the built-in tiny one or off the CPU."""
    if config.get("model") != "tiny" or not _on_cpu(config):
        return None
    m, r, u, e = COST_MODEL, config["rollout"], config["update"], config["eval"]
    samples = r["prompts_per_step"] * r["samples_per_prompt"]
    step_s = samples * (r["max_new_tokens"] * m["rollout_s_per_token"] + u["epochs"] * m["update_s_per_sample"])
    train_s = config["steps"] * step_s
    if config.get("time_budget_s") is not None:
        train_s = min(train_s, config["time_budget_s"])
    steps = math.ceil(train_s / step_s)
    evals = 2 + ((steps - 1) // e["every"] if e["every"] else 0)  # before, every `every` steps, after
    eval_s = e["num_problems"] * (e.get("max_new_tokens") or r["max_new_tokens"]) * m["eval_s_per_token"]
    eval_s *= 1 + e.get("pass_k", 0)
    return {"train_s": train_s, "total_s": m["start_s"] + train_s + evals * eval_s}


def estimate_plan_seconds(plan: Plan) -> float | None:
    """Expected wall time of the jobs not yet done, by :data:`COST_MODEL`: the warm starts first, then
    runs and controls spread over ``plan.workers`` (longest first, each to the least busy worker). A
    control trains for its seed's runs' mean training time. ``None`` when some job is outside the model."""
    m = COST_MODEL
    warm = []
    for job in plan.warm_starts:
        if job.done():
            continue
        if estimate_run(job.config) is None:
            return None
        w = job.config["warm_start"]
        warm.append(m["start_s"] + w["steps"] * w["batch_size"] * m["warm_start_s_per_example"])
    runs = {id(job): estimate_run(job.config) for job in plan.runs}
    if any(v is None for v in runs.values()):
        return None
    durations = [runs[id(job)]["total_s"] for job in plan.runs if not job.done()]
    for job in plan.controls:
        if job.done():
            continue
        mine = [runs[id(j)] for j in plan.runs if j.seed == job.seed] or list(runs.values())
        own = estimate_run(job.config)
        if not mine or own is None:
            return None
        train_s = sum(v["train_s"] for v in mine) / len(mine)
        durations.append(own["total_s"] - own["train_s"] + train_s)
    workers = max(1, plan.workers)
    loads = [0.0] * workers
    for seconds in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += seconds
    warm_s = sum(warm) if len(warm) <= 1 or workers == 1 else max(sum(warm) / workers, max(warm))
    return warm_s + max(loads)


# ----------------------------------------------------------------------------- planning
def objective_preset(preset: str, objective: str) -> str:
    """The preset to use for ``objective``: a sibling per-objective preset if one exists.

    ``qwen2.5-0.5b-gsm8k`` or ``qwen2.5-0.5b-gsm8k-sspo`` with ``grpo`` gives
    ``qwen2.5-0.5b-gsm8k-grpo`` (the paper's hyperparameters); otherwise ``preset`` itself.
    """
    from ..objectives import OBJECTIVES
    from ..trainer.config import ConfigError, resolve_preset

    stem = str(preset)
    for name in OBJECTIVES:
        if stem.endswith(f"-{name}"):
            stem = stem[: -len(name) - 1]
            break
    for candidate in (f"{stem}-{objective}", f"{preset}-{objective}"):
        try:
            resolve_preset(candidate)
        except ConfigError:
            continue
        return candidate
    return preset


def run_config(preset: str, objective: str, *, params: dict | None = None, setting: dict | None = None, seed: int = 0,
               out_dir: str | Path = "runs/x", budget_s: float | None = None, threads: int | None = None,
               overrides: list[str] | tuple = ()) -> dict:  # fmt: skip
    """Validated config (as a plain dict) of one run.

    The objective's params come from the chosen preset if it is written for ``objective``, else they
    are reset to the objective's defaults; ``params`` (ablations, sweeps) are laid over them. Then the
    ``setting``'s overrides (``{"update.mini_batches": 4, ...}``), the seed, budget, out_dir and the
    user's ``overrides`` apply, in that order.
    """
    from ..trainer.config import _merge, config_from_dict, parse_overrides, read_preset, to_dict

    data = read_preset(objective_preset(preset, objective))
    section = dict(data.get("objective") or {})
    if section.get("name", "sspo") != objective:
        section["params"] = {}
    section["name"] = objective
    section["params"] = {**(section.get("params") or {}), **(params or {})}
    data["objective"] = section
    items = [f"{k}={v}" for k, v in (setting or {}).items()]
    items += [f"seed={seed}", f"out_dir={out_dir}", "progress=false"]
    if budget_s is not None:
        items.append(f"time_budget_s={budget_s}")
    if threads is not None:
        items.append(f"threads={threads}")
    data = _merge(data, parse_overrides([*items, *overrides]))
    return to_dict(config_from_dict(data))


def auto_workers(config: dict) -> int:
    """One worker per CPU core, or one on a GPU."""
    import torch

    if config.get("device") == "cuda" or (config.get("device") == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, os.cpu_count() or 1)


class WarmStarts:
    """The warm-start jobs of a plan. ``shared``: one warm start, built with seed 0 in the usual cache,
    is every seed's starting checkpoint (linked into an experiment-private cache, ``out/<cache>``, under
    each seed's key; pass :attr:`overrides` to every run); ``per-seed``: one job per distinct warm-start key."""

    def __init__(self, plan: Plan, mode: str, seed0_config: dict, *, cache: str = SHARED_CACHE):
        from ..trainer.config import ConfigError, config_from_dict
        from ..trainer.warm_start import cache_root, warm_start_key

        if mode not in WARM_START_MODES:
            raise ConfigError(f"--warm-start: {mode!r} is not one of {', '.join(WARM_START_MODES)}")
        self.plan = plan
        self.source: Job | None = None
        self.by_key: dict[str, Job] = {}
        self.overrides: list[str] = []
        self._key, self._root = warm_start_key, cache_root
        if mode == "shared" and seed0_config["warm_start"]["steps"] > 0:
            typed = config_from_dict(seed0_config)
            path = cache_root(typed) / f"warmstart-{warm_start_key(typed)}"
            seed = seed0_config["seed"]
            who = "every seed" if cache == SHARED_CACHE else f"the seeds of {cache}"
            self.source = Job("warm_start", f"warm start shared by {who} ({path.name})", path, seed0_config, seed)
            plan.warm_starts.append(self.source)
            self.overrides = [f"warm_start.cache_dir={(plan.out / cache).resolve()}"]

    def attach(self, job: Job) -> None:
        """Make ``job`` (a training run) wait for its warm start, adding that warm start if new."""
        from ..trainer.config import config_from_dict

        typed = config_from_dict(job.config, check=False)  # validated by run_config
        if typed.warm_start.steps == 0:
            return
        key = self._key(typed)
        path = self._root(typed) / f"warmstart-{key}"
        if self.source is not None:
            if path not in self.source.links:
                self.source.links.append(path)
            job.needs.append(self.source.name)
            return
        if key not in self.by_key:
            self.by_key[key] = Job("warm_start", f"warm start seed{job.seed} ({path.name})", path, job.config, job.seed)
            self.plan.warm_starts.append(self.by_key[key])
        job.needs.append(self.by_key[key].name)


# ----------------------------------------------------------------------------- execution
class _Log:
    """Thread-safe log writer (one line per event, also echoed to stdout)."""

    def __init__(self, path: Path, echo: bool = True):
        self.path = path
        self.echo = echo
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with self.lock:
            with open(self.path, "a") as f:
                f.write(line + "\n")
            if self.echo:
                print(line, flush=True)


def _worker_env(threads: int | None) -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _spawn(job: Job, payload: dict, log_path: Path) -> int:
    """Run one job in a fresh interpreter; its output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    job_file = log_path.parent / (JOB_FILE if job.kind != "warm_start" else f"warm_start_{job.seed}.json")
    job_file.write_text(json.dumps(payload, indent=1))
    with open(log_path, "a") as log:
        proc = subprocess.run([sys.executable, "-m", "sspo.experiments.runner", str(job_file), str(os.getpid())],
                              stdout=log, stderr=subprocess.STDOUT, env=_worker_env(payload["config"].get("threads")))  # fmt: skip
    return proc.returncode


def _mean_train_seconds(plan: Plan, seed: int) -> float | None:
    values = []
    for job in plan.runs:
        if job.seed == seed and job.done():
            values.append(json.loads(job.result_file.read_text()).get("train_seconds"))
    values = [v for v in values if isinstance(v, int | float)]
    return sum(values) / len(values) if values else plan.budget_s


def _describe_result(job: Job) -> str:
    data = json.loads(job.result_file.read_text())
    if job.kind == "train":
        return (f"accuracy {data['accuracy_before']:.3f} -> {data['accuracy_after']:.3f}, {data['steps']} steps, "
                f"{data['train_seconds']:.0f} s training, {data['wall_seconds']:.0f} s wall")  # fmt: skip
    if job.kind == "sft":
        return f"accuracy {data['accuracy']:.3f}, {data['steps']} supervised steps, {data['seconds']:.0f} s"
    return f"{data.get('steps')} supervised steps, {data.get('seconds', 0):.0f} s"


def _payload(plan: Plan, job: Job) -> dict:
    payload = {"kind": job.kind, "config": job.config}
    if job.links:
        payload["links"] = [str(p) for p in job.links]
    if job.kind == "sft":  # built at dispatch time: the seed's runs have finished by then
        payload.update(directory=str(job.directory), seconds=_mean_train_seconds(plan, job.seed))
    return payload


def execute_plan(plan: Plan, *, echo: bool = True, stop_after_s: float | None = None) -> list[str]:
    """Run every job not yet done, at most ``plan.workers`` at once; returns the names of failed jobs.
    ``stop_after_s``: start no job after this many seconds (a chunk of a long plan: what runs finishes,
    the rest waits for the next call, which skips what is done).

    A run starts once its seed's warm start is built; the seed's supervised control starts once every
    run of that seed has finished (so controls of early seeds overlap later runs). A single warm start
    to build is built in this process (nothing else can run before it), with the runs' thread count:
    two torch threads on two busy cores were measured ~10x slower per step than one.
    """
    log = _Log(plan.out / plan.log_file, echo=echo)
    # warm starts first; then the runs in the plan's order, each control just after its seed's last run
    rank = {id(j): float(i) for i, j in enumerate(plan.runs)}
    last = {j.seed: i for i, j in enumerate(plan.runs)}
    rank.update({id(j): last.get(j.seed, len(plan.runs)) + 0.5 for j in plan.controls})
    rank.update({id(j): float(j.seed) for j in plan.warm_starts})
    jobs = sorted(plan.warm_starts + plan.runs + plan.controls, key=lambda j: (j.kind != "warm_start", rank[id(j)]))
    for title, group in (("warm start", plan.warm_starts), ("runs", plan.runs), ("controls", plan.controls)):
        skipped = sum(j.done() for j in group)
        if skipped:
            log(f"{title}: {skipped} of {len(group)} already done, skipped")
    finished = {j.name for j in jobs if j.done()}
    succeeded = set(finished)
    pending = [j for j in jobs if not j.done()]
    failed: list[str] = []

    warm = [j for j in pending if j.kind == "warm_start"]
    if len(warm) == 1 or (warm and plan.workers == 1):
        for job in warm:
            log(f"warm start: building {job.name} in this process")
            t0 = time.perf_counter()
            run_job(_payload(plan, job))
            log(f"done {job.name}: {_describe_result(job)} ({time.perf_counter() - t0:.0f} s)")
            finished.add(job.name)
            succeeded.add(job.name)
            pending.remove(job)
    if not pending:
        return failed
    total = len(pending)
    log(f"{total} job(s) to run on {min(plan.workers, total)} worker(s)")
    work_dir = plan.out / "workers"

    def one(job: Job, payload: dict) -> tuple[int, float]:
        t0 = time.perf_counter()
        log_path = work_dir / f"warm_start_seed{job.seed}.log" if job.kind == "warm_start" else job.directory / "worker.log"
        return _spawn(job, payload, log_path), time.perf_counter() - t0

    count = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, plan.workers)) as pool:
        running: dict = {}
        while pending or running:
            if pending and stop_after_s is not None and time.perf_counter() - started > stop_after_s:
                log(f"chunk limit of {stop_after_s / 60:.0f} min reached: {len(pending)} job(s) left for the next "
                    "call (run the same command again)")  # fmt: skip
                pending.clear()
                if not running:
                    break
            for job in list(pending):
                if len(running) >= plan.workers:
                    break
                if any(n not in finished for n in job.needs + job.after):
                    continue
                pending.remove(job)
                broken = [n for n in job.needs if n not in succeeded]
                if broken:
                    count += 1
                    failed.append(job.name)
                    finished.add(job.name)
                    log(f"[{count}/{total}] SKIPPED {job.name}: {', '.join(broken)} failed")
                    continue
                running[pool.submit(one, job, _payload(plan, job))] = job
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                rc, seconds = future.result()
                count += 1
                finished.add(job.name)
                if rc == 0 and job.done():
                    succeeded.add(job.name)
                    log(f"[{count}/{total}] done {job.name}: {_describe_result(job)} ({seconds:.0f} s)")
                else:
                    failed.append(job.name)
                    where = work_dir if job.kind == "warm_start" else job.directory
                    log(f"[{count}/{total}] FAILED {job.name} (exit {rc}); see the log in {where}")
    return failed


# ----------------------------------------------------------------------------- worker
def link_warm_start(source: Path, target: Path, *, seed: int) -> None:
    """Make ``target`` a cache entry holding the warm start in ``source`` (hard links, else copies)."""
    if (target / "warm_start.json").is_file():
        return

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, tmp, copy_function=link)
    info = json.loads((source / "warm_start.json").read_text())
    (tmp / "warm_start.json").unlink()  # a hard link: write a new file, never through it
    (tmp / "warm_start.json").write_text(json.dumps({**info, "shared_from": str(source), "shared_from_seed": seed}))
    try:
        os.replace(tmp, target)
    except OSError:  # filled concurrently
        shutil.rmtree(tmp, ignore_errors=True)


def _set_threads(config) -> None:
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)


def run_job(payload: dict) -> None:
    """Worker body: one warm start, training run (fresh or resumed) or supervised control."""
    from ..trainer.config import config_from_dict

    config = config_from_dict(payload["config"])
    _set_threads(config)
    if payload["kind"] == "warm_start":
        from ..trainer.warm_start import prepare_model

        _, _, info = prepare_model(config)
        for target in payload.get("links", []):
            link_warm_start(Path(info["path"]), Path(target), seed=config.seed)
    elif payload["kind"] == "train":
        from ..trainer import Trainer, resume
        from ..trainer.checkpoint import checkpoint_dirs

        run_dir = Path(config.out_dir)
        if checkpoint_dirs(run_dir):
            resume(run_dir, overrides=[f"time_budget_s={config.time_budget_s}"] if config.time_budget_s else [])
            return
        for stale in ("metrics.jsonl", "metrics.replayed.jsonl", "tensorboard", "plots", "final_model"):
            path = run_dir / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        Trainer(config).run()
    elif payload["kind"] == "sft":
        from ..demo import supervised_control

        result = supervised_control(config, float(payload["seconds"]))
        result.update({"seed": config.seed, "budget_s": float(payload["seconds"])})
        directory = Path(payload["directory"])
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (SFT_RESULT + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, directory / SFT_RESULT)
    else:
        raise ValueError(f"unknown job kind {payload['kind']!r}")


if __name__ == "__main__":
    from ..lifetime import die_with_parent

    if len(sys.argv) > 2:  # the plan's pid: a killed plan takes its jobs along
        die_with_parent(int(sys.argv[2]))
    run_job(json.loads(Path(sys.argv[1]).read_text()))
