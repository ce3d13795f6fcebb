"""The off-policy stress ladder of ``sspo stress``: levels of increasing off-policyness that change one
thing at a time, the methods compared (objectives and named variants such as SSPO with τ matched to
GRPO's clip, or GRPO with decoupled truncated IS), the phases of the powered design (learning-rate
tuning on seeds of its own, the main comparison, a common-lr table and a scale check) and the plan of
runs (method × level × seed, paired within a seed).

Levels combine the sources of staleness a trainer has — more optimizer updates per rollout batch
(mini-batches × epochs), rollouts sampled by an older policy (``update.staleness``, simulated; or
rollout workers beside the learner, ``async.*``, real) — plus the train–inference mismatch of
vLLM/SGLang + FSDP pipelines (a bf16 sampler whose log-probs are the behaviour log-probs). Each level
is labelled in the report by the drift it *measured* (``ppo_kl``, |Δ| quantiles, sequence-weight ESS,
attenuated/clipped fraction, effective update ratio, staleness).

Pairing: every method of a seed starts from the same warm start, trains on the same problems,
evaluates on the same held-out problems and draws the same first rollout (the sampler's generator is
seeded by ``(seed, step)`` and every run starts from the same weights). Seeds are split over
``warm_starts`` warm starts (seed ``s`` starts from warm start ``s mod warm_starts``), so the seed
variance includes warm-start variance.

Layout under ``--out``::

    runs/<level>/<method>/seed<k>/   one trainer run each (``<method>@lr<lr>`` in the tuning phase)
    stress.log                       one line per finished job
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..runner import Job, Plan, WarmStarts, auto_workers, run_config

__all__ = ["ASYNC_LEVELS", "BASELINE", "COMMON_LR", "LEVELS", "LOG_FILE", "LR_BEYOND", "LR_GRID", "MAIN",
           "MAIN_METHODS", "PHASES", "QUICK",
           "SCALE", "SWEEPS", "TUNE", "Ladder", "Level", "Variant", "build_plan", "method_variants", "parse_method",
           "variants"]  # fmt: skip

LOG_FILE = "stress.log"
PRESET = "stress"
"""The trainer preset every run starts from (``configs/stress.yaml``: the demo's model, task and warm start)."""


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: config overrides on top of the preset."""

    name: str
    overrides: dict[str, object]
    note: str


def _level(k: int, epochs: int, stale: int, **extra) -> dict[str, object]:
    return {"update.mini_batches": k, "update.epochs": epochs, "update.staleness": stale, **extra}


def _async(max_staleness: int) -> dict[str, object]:
    return _level(4, 1, 0, **{"async.workers": 1, "async.max_staleness": max_staleness})


SIM_LEVELS: tuple[Level, ...] = (
    Level("L0", _level(2, 1, 0), "2 updates per rollout (the demo's setting): near on-policy"),
    Level("L1", _level(4, 1, 0), "L0 with 4 updates per rollout"),
    Level("L2", _level(4, 1, 2), "L1 sampled by the policy of 2 updates ago (simulated staleness)"),
    Level("L3", _level(4, 2, 2), "L2 with 2 epochs over each rollout"),
    Level("L4", _level(4, 2, 4), "L3 sampled 4 updates stale"),
    Level("M1", _level(4, 1, 0, **{"rollout.sampler_dtype": "bfloat16"}),
          "L1 with train-inference mismatch: a bf16 sampler's log-probs are the behaviour log-probs"),
)
"""The simulated ladder: ``L*`` in order of increasing drift, each one change from the one before (the
frontier is read along these); ``M1`` the mismatch axis beside ``L1``."""

ASYNC_LEVELS: tuple[Level, ...] = (
    Level("A0", _async(0), "L1 with a rollout worker at max_staleness 0: the synchronous sequence (equals L1)"),
    Level("A2", _async(2), "L1 with a rollout worker, samples at most 2 updates stale (real, not simulated)"),
    Level("A4", _async(4), "L1 with a rollout worker, at most 4 updates stale"),
    Level("A8", _async(8), "L1 with a rollout worker, at most 8 updates stale"),
)
"""Levels of *real* asynchronous staleness: one rollout worker beside the learner, each one change
(``async.max_staleness``) from ``L1``. At the stress shapes the worker samples a batch about four times
faster than the learner makes its four updates, so it runs ahead to the bound; the staleness each
sample had is measured per step (``async/staleness_mean``, ``_max`` in the level table). ``A0`` repeats
``L1`` exactly (tests/trainer/test_async_training.py), so the main phase runs ``L1`` for it."""

LEVELS: tuple[Level, ...] = (*SIM_LEVELS, *ASYNC_LEVELS)

BASELINE = "grpo"
"""Paired differences are taken against this method."""


@dataclass(frozen=True)
class Variant:
    """A method of the ladder: an objective with parameters laid over its defaults, and other config
    overrides (a rollout correction, the old log-probs' source)."""

    method: str
    objective: str
    params: dict[str, object]
    overrides: dict[str, object] = field(default_factory=dict)


def _rounded(params: dict[str, float]) -> dict[str, object]:
    return {k: round(v, 4) for k, v in params.items()}


def method_variants(clip: tuple[float, float] = (0.2, 0.2)) -> dict[str, Variant]:
    """Every method ``--objectives`` accepts: each objective of ``sspo.OBJECTIVES`` at its defaults, plus

    - ``sspo-matched``: SSPO with τ matched to GRPO's clip ``(ε_low, ε_high)`` (the gate's weight is ½
      where the clip starts; :func:`sspo.match_clip_temperatures`);
    - ``grpo-tis``: decoupled PPO, verl style: GRPO centred on the learner's *proximal* log-probs
      (``update.old_logprobs=proximal``) with a token-level truncated importance weight
      ``min(π_prox/π_sampler, 2)`` (``rollout_is=token``, ``rollout_is_threshold=2``)."""
    from ...objectives import OBJECTIVES, match_clip_temperatures

    found = {name: Variant(name, name, {}) for name in OBJECTIVES}
    found["sspo-matched"] = Variant("sspo-matched", "sspo", _rounded(match_clip_temperatures(*clip, objective="sspo")))
    found["grpo-tis"] = Variant("grpo-tis", "grpo", {}, {
        "update.old_logprobs": "proximal", "objective.rollout_correction.rollout_is": "token",
        "objective.rollout_correction.rollout_is_threshold": 2.0})  # fmt: skip
    return found


MAIN_METHODS = ("grpo", "gspo", "gmpo", "sapo", "cispo", "sspo", "sspo-matched", "vespo", "m2po", "dppo_tv", "grpo-tis")
"""The methods of the powered ladder, in report order."""
MAIN_OBJECTIVES = MAIN_METHODS  # the name before named variants existed


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
        + [Variant("sspo-tau-matched", "sspo", _rounded(sspo_matched))],
        "sspo-ratio": [Variant(f"sspo-arctan_ratio-tau-{t:g}", "sspo", {"gate": "arctan_ratio", **_taus(t)})
                       for t in (1, 10)]
        + [Variant("sspo-arctan_ratio-tau-matched", "sspo", {"gate": "arctan_ratio", **_rounded(ratio_matched)})],
        "sapo-tau": [Variant(f"sapo-tau-{t:g}", "sapo", _taus(t)) for t in (2, 5, 10)]
        + [Variant("sapo-tau-matched", "sapo", _rounded(sapo_matched))],
    }  # fmt: skip


SWEEPS = ("sspo-tau", "sspo-ratio", "sapo-tau")
SWEEP_LEVELS = ("L3",)
"""Where the sweeps run when asked for (``--sweeps``): the first level at which the objectives part ways."""

LR_GRID = (3e-5, 1e-4, 3e-4)
LR_BEYOND = {3e-5: 1e-5, 3e-4: 1e-3}
"""One more point past each edge of the grid: a method whose best lr on the grid is an edge also runs
there, once (so its chosen lr is not an artefact of where the grid stops)."""
COMMON_LR_VALUE = 1e-4
"""The learning rate every method shared in the first ladder (tuned on the SSPO demo)."""


@dataclass(frozen=True)
class Ladder:
    """What one ``sspo stress`` run covers."""

    levels: tuple[str, ...]
    objectives: tuple[str, ...]
    """Methods: objectives or named variants (:func:`method_variants`)."""
    seeds: int
    sweeps: tuple[str, ...] = ()
    sweep_levels: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    first_seed: int = 0
    """Seeds are ``first_seed, first_seed + 1, ...`` (the tuning phase has seeds of its own)."""
    headline_levels: tuple[str, ...] = ()
    headline_seeds: int = 0
    """Cells of ``headline_levels`` run this many seeds (when above ``seeds``)."""
    lrs: tuple[float, ...] = ()
    """A grid: every method runs at every lr, as method ``<method>@lr<lr>`` (the tuning phase)."""
    lr: tuple[tuple[str, float], ...] = ()
    """``(method, lr)`` pairs: each method's own lr (``optim.lr``); a method not named keeps the preset's."""
    warm_starts: int = 1
    """Seed ``s`` starts from warm start ``s mod warm_starts`` (built with seed ``s mod warm_starts``)."""


TUNING_SEED = 1000
TUNE = Ladder(levels=("L3", "A4"), objectives=MAIN_METHODS, seeds=2, first_seed=TUNING_SEED, lrs=LR_GRID, warm_starts=2)
"""Learning-rate tuning: every method at every lr of the grid, at the levels where the objectives part
ways, on seeds 1000, 1001 (never the evaluation seeds); the report chooses each method's lr."""
MAIN = Ladder(levels=("L0", "L1", "L2", "L3", "L4", "M1", "A2", "A4", "A8"), objectives=MAIN_METHODS, seeds=8,
              headline_levels=("L0", "L3"), headline_seeds=12, warm_starts=2)  # fmt: skip
"""The comparison: every method at its tuned lr, 8 seeds per cell and 12 in the headline levels (``L0``,
the baseline of the differences in differences, and ``L3``)."""
COMMON_LR = Ladder(levels=("L3",), objectives=MAIN_METHODS, seeds=8, warm_starts=2,
                   lr=tuple((m, COMMON_LR_VALUE) for m in MAIN_METHODS))  # fmt: skip
"""Every method at lr 1e-4 (the second table); runs the main phase already has are not repeated."""
SCALE = Ladder(levels=("L3",), objectives=("grpo", "sspo-matched", "vespo"), seeds=8, warm_starts=2,
               overrides=("model=tiny-4x",))  # fmt: skip
"""The scale check: ``L3`` with the 4x-parameter model (``tiny-4x``, warm-started the same way)."""
PHASES = {"tune": TUNE, "main": MAIN, "common-lr": COMMON_LR, "scale": SCALE}
FULL = MAIN
QUICK = Ladder(levels=("L0", "L3", "L4"), objectives=("grpo", "sspo", "sapo"), seeds=2, overrides=("steps=30",))
"""``--quick``: three levels, three methods, two seeds, 30 steps (≤ 20 min on 2 cores)."""


def level(name: str) -> Level:
    from ...trainer.config import ConfigError

    for candidate in LEVELS:
        if candidate.name == name:
            return candidate
    raise ConfigError(f"--levels: unknown level {name!r}; valid: {', '.join(x.name for x in LEVELS)}")


def lr_tag(lr: float) -> str:
    return f"@lr{lr:g}"


def parse_method(name: str) -> tuple[str, float | None]:
    """``"grpo@lr3e-05"`` → ``("grpo", 3e-05)``; a name without a tag → ``(name, None)``."""
    method, sep, lr = name.partition("@lr")
    return (method, float(lr)) if sep else (name, None)


def build_plan(out: str | Path, ladder: Ladder, *, workers: int = 0, overrides: list[str] | tuple = (),
               preset: str = PRESET, skip: set[tuple[str, str, int]] | None = None) -> Plan:  # fmt: skip
    """Every run of the ladder, each seed from its group's warm start: the headline levels' runs first,
    seed-major (a chunk that ends early leaves paired seeds where the headline claims rest), then the
    other levels', seed-major (early results cover every cell). ``skip``: ``(level, method, seed)`` runs
    to leave out (done elsewhere)."""
    from ...trainer.config import ConfigError

    known = method_variants()
    sweeps = variants()
    for name in ladder.objectives:
        if name not in known:
            raise ConfigError(f"--objectives: unknown method {name!r}; valid: {', '.join(known)}")
    if BASELINE not in ladder.objectives:
        raise ConfigError(f"--objectives: must include {BASELINE}, the baseline of the paired differences")
    for name in ladder.sweeps:
        if name not in sweeps:
            raise ConfigError(f"--sweeps: unknown sweep {name!r}; valid: {', '.join(sweeps)}")
    if ladder.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {ladder.seeds}")
    if ladder.warm_starts < 1:
        raise ConfigError(f"warm starts: must be >= 1, got {ladder.warm_starts}")
    levels = [level(n) for n in ladder.levels]
    sweep_levels = [level(n) for n in ladder.sweep_levels]
    headline = {level(n).name for n in ladder.headline_levels}
    out = Path(out)
    overrides = [*ladder.overrides, *overrides]
    probe = run_config(preset, BASELINE, setting=levels[0].overrides, out_dir=out / "probe", overrides=overrides)
    workers = workers or auto_workers(probe)
    threads = 1 if workers > 1 else None
    plan = Plan(out=out, workers=workers, log_file=LOG_FILE)
    groups = []
    for g in range(ladder.warm_starts):
        seed_config = run_config(preset, BASELINE, setting=levels[0].overrides, seed=g, out_dir=out / "probe",
                                 overrides=overrides)  # fmt: skip
        cache = "warm_starts" if ladder.warm_starts == 1 else f"warm_starts/g{g}"
        groups.append(WarmStarts(plan, "shared", seed_config, cache=cache))
    chosen = dict(ladder.lr)
    methods = [(known[name], lr) for name in ladder.objectives for lr in (ladder.lrs or (chosen.get(name),))]
    cells = [(lv, v, lr) for lv in levels for v, lr in methods]
    cells += [(lv, v, chosen.get(v.objective)) for lv in sweep_levels for group in ladder.sweeps for v in sweeps[group]]
    seeds = range(ladder.first_seed, ladder.first_seed + max(ladder.seeds, ladder.headline_seeds))
    order = [(i, seed, cell) for i, seed in enumerate(seeds) for cell in cells if cell[0].name in headline]
    order += [(i, seed, cell) for i, seed in enumerate(seeds) for cell in cells if cell[0].name not in headline]
    for i, seed, (lv, variant, lr) in order:
        warm = groups[seed % ladder.warm_starts]
        if i >= ladder.seeds and lv.name not in headline:
            continue
        method = variant.method + (lr_tag(lr) if ladder.lrs else "")
        if skip and (lv.name, method, seed) in skip:
            continue
        directory = out / "runs" / lv.name / method / f"seed{seed}"
        setting = {**lv.overrides, **variant.overrides, **({"optim.lr": lr} if lr is not None else {})}
        config = run_config(preset, variant.objective, params=variant.params, setting=setting, seed=seed,
                            out_dir=directory, threads=threads, overrides=[*overrides, *warm.overrides])  # fmt: skip
        job = Job("train", f"{lv.name}/{method}/seed{seed}", directory, config, seed, lv.name, method)
        plan.runs.append(job)
        warm.attach(job)
    return plan
