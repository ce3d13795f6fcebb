"""The run matrix of ``sspo compare``: plan every objective × setting × seed (+ SSPO ablations and
controls), then run the plan resumably, optionally in parallel worker processes.

Layout under ``--out``::

    runs/<setting>/<method>/seed<k>/      one trainer run each (config.yaml, metrics.jsonl, final_metrics.json)
    controls/sft/seed<k>/result.json      supervised control with the RL runs' mean training time
    compare.log                           one line per finished job

A job whose result file exists is skipped; a run directory with checkpoints but no
``final_metrics.json`` is resumed from its last checkpoint. Workers are ``python -m
sspo.experiments.compare_runs JOB.json`` subprocesses (``threads=1`` each when several run at once).
This module imports torch only inside the worker and the warm-start key.
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

__all__ = ["ABLATIONS", "ABLATION_SETTING", "SETTINGS", "Job", "Plan", "build_plan", "execute_plan"]

SETTINGS: dict[str, dict[str, object]] = {
    "onpolicy": {"update.mini_batches": 1, "update.epochs": 1, "update.staleness": 0},
    "offpolicy": {"update.mini_batches": 4, "update.epochs": 1, "update.staleness": 2},
    "preset": {},
}
"""Stress settings: config overrides applied on top of the preset (``preset``: none, the preset's own)."""

SETTING_NOTES: dict[str, str] = {
    "onpolicy": "1 update per rollout batch, fresh rollouts: every ratio is 1 at the update (on-policy-ish)",
    "offpolicy": "4 updates per rollout batch, rollouts sampled by the policy of 2 updates ago (strongly off-policy)",
    "preset": "the preset's own update settings",
}

ABLATIONS: dict[str, list[tuple[str, dict[str, object]]]] = {
    "gates": [("sspo-gate-sigmoid", {"gate": "sigmoid"}), ("sspo-gate-gaussian", {"gate": "gaussian"})],
    "tau": [("sspo-tau-0.5", {"tau_pos": 0.5, "tau_neg": 0.525}), ("sspo-tau-2", {"tau_pos": 2.0, "tau_neg": 2.1})],
}
"""SSPO-only extra runs (method name, objective params over SSPO's); the main ``sspo`` run is arctan, τ=1/1.05."""

ABLATION_SETTING = "offpolicy"
"""Ablations run in this setting only (where the gate matters: ratios far from 1)."""

WARM_START_MODES = ("shared", "per-seed")
SHARED_CACHE = "warm_starts"
"""Comparison-private warm-start cache (under ``--out``) holding the shared warm start under every seed's key."""

LOG_FILE = "compare.log"
JOB_FILE = "compare_job.json"
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

    def describe(self) -> str:
        """Human-readable plan (``--dry-run``)."""
        lines = [f"out: {self.out}", f"workers: {self.workers}", f"time budget per run: {self.budget_s} s"]
        for title, jobs in (("warm starts", self.warm_starts), ("runs", self.runs), ("controls", self.controls)):
            todo = sum(not j.done() for j in jobs)
            lines.append(f"{title}: {len(jobs)} ({todo} to do)")
            lines += [f"  {'done ' if j.done() else 'to do'} {j.name}" for j in jobs]
        todo_runs = sum(not j.done() for j in self.runs) + sum(not j.done() for j in self.controls)
        if self.budget_s:
            slots = math.ceil(todo_runs / max(1, self.workers))
            lines.append(f"budget-bound time of what is left: {slots} rounds x {self.budget_s:.0f} s = "
                         f"{slots * self.budget_s / 60:.0f} min (+ evaluations, start-up and warm starts)")  # fmt: skip
        return "\n".join(lines)


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


def run_config(preset: str, objective: str, *, params: dict | None = None, setting: str = "preset", seed: int = 0,
               out_dir: str | Path = "runs/x", budget_s: float | None = None, threads: int | None = None,
               overrides: list[str] | tuple = ()) -> dict:  # fmt: skip
    """Validated config (as a plain dict) of one run.

    The objective's params come from the chosen preset if it is written for ``objective``, else they
    are reset to the objective's defaults; ``params`` (ablations) are laid over them. Then the
    setting's overrides, the seed, budget, out_dir and the user's ``overrides`` apply, in that order.
    """
    from ..trainer.config import _merge, config_from_dict, parse_overrides, read_preset, to_dict

    data = read_preset(objective_preset(preset, objective))
    section = dict(data.get("objective") or {})
    if section.get("name", "sspo") != objective:
        section["params"] = {}
    section["name"] = objective
    section["params"] = {**(section.get("params") or {}), **(params or {})}
    data["objective"] = section
    items = [f"{k}={v}" for k, v in SETTINGS[setting].items()]
    items += [f"seed={seed}", f"out_dir={out_dir}", "progress=false"]
    if budget_s is not None:
        items.append(f"time_budget_s={budget_s}")
    if threads is not None:
        items.append(f"threads={threads}")
    data = _merge(data, parse_overrides([*items, *overrides]))
    return to_dict(config_from_dict(data))


def _auto_workers(config: dict) -> int:
    import torch

    if config.get("device") == "cuda" or (config.get("device") == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, os.cpu_count() or 1)


def build_plan(out: str | Path, *, preset: str = "tiny", objectives: list[str], seeds: int, settings: list[str],
               ablations: list[str] = (), ablation_seeds: int | None = None, controls: bool = True,
               budget_s: float | None = None, workers: int = 0, overrides: list[str] | tuple = (),
               warm_start: str = "shared") -> Plan:  # fmt: skip
    """Every job of the comparison, ordered seed-major so early results cover every method.

    ``warm_start="shared"``: one warm start (built with seed 0) is the starting checkpoint of every
    seed; ``"per-seed"``: each seed builds its own (the trainer's cache is keyed by the seed).
    """
    from ..objectives import OBJECTIVES
    from ..trainer.config import ConfigError

    for name in objectives:
        if name not in OBJECTIVES:
            raise ConfigError(f"--objectives: unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    for name in settings:
        if name not in SETTINGS:
            raise ConfigError(f"--settings: unknown setting {name!r}; valid: {', '.join(SETTINGS)}")
    for name in ablations:
        if name not in ABLATIONS:
            raise ConfigError(f"--ablations: unknown ablation {name!r}; valid: {', '.join(ABLATIONS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    out = Path(out)
    probe = run_config(preset, objectives[0], setting=settings[0], out_dir=out / "probe", budget_s=budget_s,
                       overrides=overrides)  # fmt: skip
    workers = workers or _auto_workers(probe)
    threads = 1 if workers > 1 else None
    budget = probe.get("time_budget_s")
    plan = Plan(out=out, workers=workers, budget_s=budget)

    specs: list[tuple[int, str, str, str, dict]] = []  # seed, setting, method, objective, params
    for seed in range(seeds):
        for setting in settings:
            specs += [(seed, setting, name, name, {}) for name in objectives]
    ablation_seeds = seeds if ablation_seeds is None else ablation_seeds
    for seed in range(ablation_seeds):
        for group in ablations:
            specs += [(seed, ABLATION_SETTING, method, "sspo", params) for method, params in ABLATIONS[group]]
    specs.sort(key=lambda s: s[0])  # stable: seed-major, plan order within a seed

    from ..trainer.config import config_from_dict
    from ..trainer.warm_start import cache_root, warm_start_key

    if warm_start not in WARM_START_MODES:
        raise ConfigError(f"--warm-start: {warm_start!r} is not one of {', '.join(WARM_START_MODES)}")
    shared = warm_start == "shared" and probe["warm_start"]["steps"] > 0
    source: Job | None = None
    if shared:  # built with seed 0 in the usual cache, then linked into a comparison-private cache per seed
        config = run_config(preset, objectives[0], setting=settings[0], seed=0, out_dir=out / "probe",
                            budget_s=budget_s, overrides=overrides)  # fmt: skip
        typed = config_from_dict(config)
        path = cache_root(typed) / f"warmstart-{warm_start_key(typed)}"
        source = Job("warm_start", f"warm start shared by every seed ({path.name})", path, config, 0)
        plan.warm_starts.append(source)
        overrides = [*overrides, f"warm_start.cache_dir={(out / SHARED_CACHE).resolve()}"]
    seen_keys: dict[str, Job] = {}
    first_config: dict[int, dict] = {}
    for seed, setting, method, objective, params in specs:
        directory = out / "runs" / setting / method / f"seed{seed}"
        config = run_config(preset, objective, params=params, setting=setting, seed=seed, out_dir=directory,
                            budget_s=budget_s, threads=threads, overrides=overrides)  # fmt: skip
        job = Job("train", f"{setting}/{method}/seed{seed}", directory, config, seed, setting, method)
        plan.runs.append(job)
        first_config.setdefault(seed, config)
        typed = config_from_dict(config)
        if typed.warm_start.steps > 0:
            key = warm_start_key(typed)
            path = cache_root(typed) / f"warmstart-{key}"
            if source is not None:
                if path not in source.links:
                    source.links.append(path)
                job.needs.append(source.name)
                continue
            if key not in seen_keys:
                seen_keys[key] = Job("warm_start", f"warm start seed{seed} ({path.name})", path, config, seed)
                plan.warm_starts.append(seen_keys[key])
            job.needs.append(seen_keys[key].name)
    if controls:
        for seed, config in sorted(first_config.items()):
            directory = out / "controls" / "sft" / f"seed{seed}"
            runs = [j for j in plan.runs if j.seed == seed]
            plan.controls.append(Job("sft", f"control/sft/seed{seed}", directory, config, seed, "control", "sft",
                                     needs=list(runs[0].needs), after=[j.name for j in runs]))  # fmt: skip
    return plan


# ----------------------------------------------------------------------------- execution
class _Log:
    """Thread-safe ``compare.log`` writer (and echo to stdout)."""

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
        proc = subprocess.run([sys.executable, "-m", "sspo.experiments.compare_runs", str(job_file)],
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


def execute_plan(plan: Plan, *, echo: bool = True) -> list[str]:
    """Run every job not yet done, at most ``plan.workers`` at once; returns the names of failed jobs.

    A run starts once its seed's warm start is built; the seed's supervised control starts once every
    run of that seed has finished (so controls of early seeds overlap later runs). A single warm start
    to build is built in this process (nothing else can run before it), with the runs' thread count:
    two torch threads on two busy cores were measured ~10x slower per step than one.
    """
    log = _Log(plan.out / LOG_FILE, echo=echo)
    order = {"warm_start": 0, "train": 1, "sft": 1}
    jobs = sorted(plan.warm_starts + plan.runs + plan.controls,
                  key=lambda j: (order[j.kind], j.seed, j.kind == "sft"))  # fmt: skip
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
    with ThreadPoolExecutor(max_workers=max(1, plan.workers)) as pool:
        running: dict = {}
        while pending or running:
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
    run_job(json.loads(Path(sys.argv[1]).read_text()))
