"""The run matrix of ``sspo compare``: every objective × setting × seed (+ SSPO ablations and the
supervised controls), run resumably in parallel by :mod:`sspo.experiments.runner`.

Layout under ``--out``::

    runs/<setting>/<method>/seed<k>/      one trainer run each (config.yaml, metrics.jsonl, final_metrics.json)
    controls/sft/seed<k>/result.json      supervised control with the RL runs' mean training time
    compare.log                           one line per finished job
"""

from __future__ import annotations

from pathlib import Path

from ..runner import Job, Plan, WarmStarts, auto_workers, execute_plan, run_config

__all__ = ["ABLATIONS", "ABLATION_SETTING", "LOG_FILE", "SETTINGS", "build_plan", "execute_plan"]

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

LOG_FILE = "compare.log"


def build_plan(out: str | Path, *, preset: str = "tiny", objectives: list[str], seeds: int, settings: list[str],
               ablations: list[str] = (), ablation_seeds: int | None = None, controls: bool = True,
               budget_s: float | None = None, workers: int = 0, overrides: list[str] | tuple = (),
               warm_start: str = "shared") -> Plan:  # fmt: skip
    """Every job of the comparison, ordered seed-major so early results cover every method.

    ``warm_start="shared"``: one warm start (built with seed 0) is the starting checkpoint of every
    seed; ``"per-seed"``: each seed builds its own (the trainer's cache is keyed by the seed).
    """
    from ...objectives import OBJECTIVES
    from ...trainer.config import ConfigError

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
    probe = run_config(preset, objectives[0], setting=SETTINGS[settings[0]], out_dir=out / "probe", budget_s=budget_s,
                       overrides=overrides)  # fmt: skip
    workers = workers or auto_workers(probe)
    threads = 1 if workers > 1 else None
    budget = probe.get("time_budget_s")
    plan = Plan(out=out, workers=workers, budget_s=budget, log_file=LOG_FILE)

    specs: list[tuple[int, str, str, str, dict]] = []  # seed, setting, method, objective, params
    for seed in range(seeds):
        for setting in settings:
            specs += [(seed, setting, name, name, {}) for name in objectives]
    ablation_seeds = seeds if ablation_seeds is None else ablation_seeds
    for seed in range(ablation_seeds):
        for group in ablations:
            specs += [(seed, ABLATION_SETTING, method, "sspo", params) for method, params in ABLATIONS[group]]
    specs.sort(key=lambda s: s[0])  # stable: seed-major, plan order within a seed

    warm = WarmStarts(plan, warm_start, probe)  # the probe is seed 0's config
    overrides = [*overrides, *warm.overrides]
    first_config: dict[int, dict] = {}
    for seed, setting, method, objective, params in specs:
        directory = out / "runs" / setting / method / f"seed{seed}"
        config = run_config(preset, objective, params=params, setting=SETTINGS[setting], seed=seed, out_dir=directory,
                            budget_s=budget_s, threads=threads, overrides=overrides)  # fmt: skip
        job = Job("train", f"{setting}/{method}/seed{seed}", directory, config, seed, setting, method)
        plan.runs.append(job)
        first_config.setdefault(seed, config)
        warm.attach(job)
    if controls:
        for seed, config in sorted(first_config.items()):
            directory = out / "controls" / "sft" / f"seed{seed}"
            runs = [j for j in plan.runs if j.seed == seed]
            plan.controls.append(Job("sft", f"control/sft/seed{seed}", directory, config, seed, "control", "sft",
                                     needs=list(runs[0].needs), after=[j.name for j in runs]))  # fmt: skip
    return plan


