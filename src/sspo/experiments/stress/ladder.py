"""The off-policy stress ladder of ``sspo stress``: levels of increasing off-policyness, the τ sweeps run
where the gates are active, and the plan of runs (objective × level × seed, paired within a seed).

Levels combine the three sources of staleness a trainer has — more optimizer updates per rollout batch
(mini-batches × epochs), rollouts sampled by an older policy (``update.staleness``) and larger steps
(``optim.lr``) — plus the train–inference mismatch of vLLM/SGLang + FSDP pipelines (a bf16 sampler whose
log-probs are the behaviour log-probs). Each level is labelled in the report by the drift it *measured*
(``ppo_kl``, |Δ| quantiles, sequence-weight ESS, attenuated/clipped fraction, effective update ratio).

Pairing: every objective of a seed starts from the same warm start, trains on the same problems,
evaluates on the same held-out problems and draws the same first rollout (the sampler's generator is
seeded by ``(seed, step)`` and every run starts from the same weights).

Layout under ``--out``::

    runs/<level>/<method>/seed<k>/   one trainer run each
    stress.log                       one line per finished job
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runner import Job, Plan, WarmStarts, auto_workers, run_config

__all__ = ["ASYNC_LEVELS", "LEVELS", "LOG_FILE", "MAIN_OBJECTIVES", "QUICK", "SWEEPS", "Level", "Variant", "build_plan", "variants"]

LOG_FILE = "stress.log"
PRESET = "stress"
"""The trainer preset every run starts from (``configs/stress.yaml``: the demo's model, task and warm start)."""


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: config overrides on top of the preset."""

    name: str
    overrides: dict[str, object]
    note: str


def _level(k: int, epochs: int, stale: int, lr: float = 1e-4, **extra) -> dict[str, object]:
    return {"update.mini_batches": k, "update.epochs": epochs, "update.staleness": stale, "optim.lr": lr, **extra}


LEVELS: tuple[Level, ...] = (
    Level("L0", _level(2, 1, 0), "2 updates per rollout (the demo's setting): near on-policy"),
    Level("L1", _level(4, 1, 0), "4 updates per rollout"),
    Level("L2", _level(4, 1, 2), "4 updates per rollout, sampled by the policy of 2 updates ago"),
    Level("L3", _level(4, 2, 2), "4 mini-batches x 2 epochs, sampled 2 updates stale"),
    Level("L4", _level(8, 2, 4), "8 mini-batches x 2 epochs, sampled 4 updates stale"),
    Level("L5", _level(8, 2, 8, 3e-4), "8 mini-batches x 2 epochs, 8 updates stale, lr 3e-4"),
    Level("M1", _level(4, 1, 0, **{"rollout.sampler_dtype": "bfloat16"}),
          "L1 with train-inference mismatch: a bf16 sampler's log-probs are the behaviour log-probs"),
)
"""The simulated ladder: ``L*`` in order of increasing drift (the frontier is read along these), ``M*``
the mismatch axis beside its ``L`` level."""


def _async(workers: int, max_staleness: int) -> dict[str, object]:
    return _level(4, 1, 0, **{"async.workers": workers, "async.max_staleness": max_staleness})


ASYNC_LEVELS: tuple[Level, ...] = (
    Level("A0", _async(1, 0), "L1 with a rollout worker at max_staleness 0: the synchronous sequence"),
    Level("A2", _async(1, 2), "L1 with a rollout worker, samples at most 2 updates stale (real, not simulated)"),
    Level("A4", _async(2, 4), "L1 with two rollout workers, at most 4 updates stale"),
    Level("A8", _async(2, 8), "L1 with two rollout workers, at most 8 updates stale"),
)
"""Levels of *real* asynchronous staleness (``--levels A0,A2,A4,A8``): rollout workers beside the learner,
the staleness each sample had measured per step (``async/staleness_mean``, ``_max`` in the level table).
Not in the default ladder: a run takes an extra process, and the staleness a run reaches depends on the
machine's speed, so it is read from the table, not from the level's name."""

LEVELS: tuple[Level, ...] = (*LEVELS, *ASYNC_LEVELS)

MAIN_OBJECTIVES = ("grpo", "gspo", "gmpo", "sapo", "sspo", "cispo")
BASELINE = "grpo"
"""Paired differences are taken against this objective."""


@dataclass(frozen=True)
class Variant:
    """A method of the ladder: an objective with parameters laid over its defaults."""

    method: str
    objective: str
    params: dict[str, object]


def _taus(tau: float) -> dict[str, object]:
    return {"tau_pos": tau, "tau_neg": round(1.05 * tau, 6)}  # τ_neg/τ_pos as in the defaults


def variants(clip: tuple[float, float] = (0.2, 0.2)) -> dict[str, list[Variant]]:
    """The τ sweeps (``--sweeps``), each with temperatures matched to GRPO's clip ``(ε_low, ε_high)``."""
    from ...objectives import match_clip_temperatures

    eps_low, eps_high = clip
    sspo_matched = match_clip_temperatures(eps_low, eps_high, objective="sspo")
    sapo_matched = match_clip_temperatures(eps_low, eps_high, objective="sapo")
    ratio_matched = match_clip_temperatures(eps_low, eps_high, objective="sspo", gate="arctan_ratio")
    return {
        "sspo-tau": [Variant(f"sspo-tau-{t:g}", "sspo", _taus(t)) for t in (0.5, 2, 5, 10)]
        + [Variant("sspo-tau-matched", "sspo", {k: round(v, 4) for k, v in sspo_matched.items()})],
        "sspo-ratio": [Variant(f"sspo-arctan_ratio-tau-{t:g}", "sspo", {"gate": "arctan_ratio", **_taus(t)})
                       for t in (1, 10)]
        + [Variant("sspo-arctan_ratio-tau-matched", "sspo",
                   {"gate": "arctan_ratio", **{k: round(v, 4) for k, v in ratio_matched.items()}})],
        "sapo-tau": [Variant(f"sapo-tau-{t:g}", "sapo", _taus(t)) for t in (2, 5, 10)]
        + [Variant("sapo-tau-matched", "sapo", {k: round(v, 4) for k, v in sapo_matched.items()})],
    }  # fmt: skip


SWEEPS = ("sspo-tau", "sspo-ratio", "sapo-tau")
SWEEP_LEVELS = ("L3",)
"""Where the sweeps run: the first level at which the objectives part ways and SSPO's gates are active."""


@dataclass(frozen=True)
class Ladder:
    """What one ``sspo stress`` run covers."""

    levels: tuple[str, ...]
    objectives: tuple[str, ...]
    seeds: int
    sweeps: tuple[str, ...]
    sweep_levels: tuple[str, ...]
    overrides: tuple[str, ...] = ()


FULL = Ladder(levels=tuple(level.name for level in LEVELS if level not in ASYNC_LEVELS), objectives=MAIN_OBJECTIVES, seeds=8, sweeps=SWEEPS,
              sweep_levels=SWEEP_LEVELS)  # fmt: skip
QUICK = Ladder(levels=("L0", "L3", "L5"), objectives=("grpo", "sspo", "sapo"), seeds=2, sweeps=(), sweep_levels=(),
               overrides=("steps=30",))  # fmt: skip
"""``--quick``: three levels, three objectives, two seeds, 30 steps (≤ 20 min on 2 cores)."""


def level(name: str) -> Level:
    from ...trainer.config import ConfigError

    for candidate in LEVELS:
        if candidate.name == name:
            return candidate
    raise ConfigError(f"--levels: unknown level {name!r}; valid: {', '.join(x.name for x in LEVELS)}")


def build_plan(out: str | Path, ladder: Ladder, *, workers: int = 0, overrides: list[str] | tuple = (),
               preset: str = PRESET) -> Plan:  # fmt: skip
    """Every run of the ladder, seed-major (early results cover every cell), sharing one warm start."""
    from ...objectives import OBJECTIVES
    from ...trainer.config import ConfigError

    for name in ladder.objectives:
        if name not in OBJECTIVES:
            raise ConfigError(f"--objectives: unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    if BASELINE not in ladder.objectives:
        raise ConfigError(f"--objectives: must include {BASELINE}, the baseline of the paired differences")
    sweeps = variants()
    for name in ladder.sweeps:
        if name not in sweeps:
            raise ConfigError(f"--sweeps: unknown sweep {name!r}; valid: {', '.join(sweeps)}")
    if ladder.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {ladder.seeds}")
    levels = [level(n) for n in ladder.levels]
    sweep_levels = [level(n) for n in ladder.sweep_levels]
    out = Path(out)
    overrides = [*ladder.overrides, *overrides]
    probe = run_config(preset, BASELINE, setting=levels[0].overrides, out_dir=out / "probe", overrides=overrides)
    workers = workers or auto_workers(probe)
    threads = 1 if workers > 1 else None
    plan = Plan(out=out, workers=workers, log_file=LOG_FILE)
    warm = WarmStarts(plan, "shared", probe)
    overrides = [*overrides, *warm.overrides]
    cells = [(lv, Variant(name, name, {})) for lv in levels for name in ladder.objectives]
    cells += [(lv, v) for lv in sweep_levels for group in ladder.sweeps for v in sweeps[group]]
    for seed in range(ladder.seeds):
        for lv, variant in cells:
            directory = out / "runs" / lv.name / variant.method / f"seed{seed}"
            config = run_config(preset, variant.objective, params=variant.params, setting=lv.overrides, seed=seed,
                                out_dir=directory, threads=threads, overrides=overrides)  # fmt: skip
            job = Job("train", f"{lv.name}/{variant.method}/seed{seed}", directory, config, seed, lv.name,
                      variant.method)  # fmt: skip
            plan.runs.append(job)
            warm.attach(job)
    return plan
