"""Typed configuration of a training run. Every field has a docstring: this file documents every knob.

Load with :func:`load_config` (YAML preset + ``section.field=value`` overrides); :func:`validate`
checks everything before any work and raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .asynchronous.config import AsyncConfig, check_async_config

TASK_REWARDS = ("answer", "answer_and_work", "partial")
"""Training rewards of ``task.reward`` (``answer_and_work``: math tasks only; ``partial``: code tasks only)."""
SFT_SCHEDULES = ("cosine", "linear", "constant")
"""Learning-rate schedules of supervised training (``warm_start.schedule``)."""
OLD_LOGPROBS = ("auto", "recompute", "sampler", "proximal")
"""Sources of the old log-probs the ratios are centred on (``update.old_logprobs``)."""
SAMPLER_DTYPES = ("same", "float32", "bfloat16", "float16")
"""Precisions the sampler may run in (``rollout.sampler_dtype``)."""
TRUNCATED = ("drop", "zero", "score")
"""What happens to responses cut off at ``max_new_tokens`` (``rollout.truncated``)."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when PyYAML has it: ~10x faster
    """The safe loader with YAML 1.2's numbers: no underscores, so ``0.5_5`` (an IcePop band of
    ``objective.rollout_correction``) stays a string instead of becoming YAML 1.1's 0.55."""

    yaml_implicit_resolvers = {
        first: [(tag, re.compile(r"^(?!.*_)" + regexp.pattern.removeprefix("^"), regexp.flags))
                if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") else (tag, regexp)
                for tag, regexp in resolvers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }  # fmt: skip


def _yaml(text: str):
    """``yaml.safe_load`` (with libyaml's safe loader where available)."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the dotted field name."""


@dataclass
class TaskConfig:
    name: str = "synthetic"
    """Task: math — ``synthetic`` (built-in, offline), ``gsm8k``, ``deepmath``; code (rewarded by running
    the tests, docs/code_tasks.md) — ``synthetic_code`` (built-in, offline), ``humaneval``, ``leetcode``."""
    path: str | None = None
    """Hub id or local file/directory for the data-set tasks (``None``: the official hub id)."""
    train_split: str = "train"
    """Split trained on."""
    eval_split: str = "test"
    """Held-out split evaluated on."""
    train_size: int | None = None
    """Problems loaded for training (``None``: the task's default / all)."""
    template: str = "auto"
    """Prompt template: ``auto`` (chat template if the tokenizer has one, else plain), ``chat``, ``plain``, ``raw``."""
    reward: str = "answer"
    """Training reward: ``answer`` (1 if the final answer is right; for a code task, if the program passes
    every test), ``answer_and_work`` (math: also every shown equation ``a∘b=c`` is true, they chain, and the
    answer follows from them; see ``sspo.rewards.work``) or ``partial`` (code: the fraction of the tests'
    assertions that held). Evaluation always scores the final answer alone, or every test."""
    options: dict[str, Any] = field(default_factory=dict)
    """Task options, e.g. synthetic ``{max_steps: 3, max_operand: 9}`` or deepmath ``{min_difficulty: 5}``
    (``sspo.tasks.task_options(name)`` lists them). Changing ``task.name`` drops the old task's options;
    ``task.options={}`` clears them."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 16
    """P: prompts sampled per training step."""
    samples_per_prompt: int = 8
    """G: responses per prompt (the group of the advantage)."""
    max_new_tokens: int = 32
    """Longest response; generation stops at EOS."""
    temperature: float = 1.0
    """Sampling temperature (the policy's log-probs use the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    backend: str = "auto"
    """Decoder: ``auto`` (lean decoder for Qwen2/Llama, else ``hf``), ``fast`` or ``hf``."""
    sampler_dtype: str = "same"
    """Train–inference mismatch, the off-policy source of every vLLM/SGLang + FSDP pipeline: sample with a
    copy of the behaviour policy cast to this precision (e.g. ``bfloat16`` while training in float32) and
    take the behaviour log-probs from that sampler, as such pipelines do, so that even the first update
    of a fresh rollout sees ratios ≠ 1. ``same``: no mismatch (the sampler is the trained model)."""
    reward_timeout: float = 1.0
    """Seconds allowed per symbolic answer comparison; for a code task, per program (start-up, import and
    every call of its tests together)."""
    code_memory_mb: int = 1024
    """Code tasks: the address-space limit of each program, in MiB (the interpreter's own mappings included)."""
    reward_workers: int | None = None
    """Code tasks: programs run at once, each in its own sandboxed judge (``None``: two per usable core)."""
    truncated: str = "drop"
    """Responses cut off at ``max_new_tokens`` (no EOS): ``drop`` (DAPO's overlong filtering: they get no
    loss and are left out of their group's advantage statistics), ``zero`` (reward 0, trained on as
    wrong) or ``score`` (graded like finished ones, e.g. by the last number they happen to contain).
    ``rollout/truncated_frac`` logs how many there were."""
    filter_groups: bool = False
    """DAPO's dynamic sampling: sample ``oversample × P`` prompts and train on the first ``P`` groups whose
    rewards are not all equal (a group of equal rewards has zero advantage and no gradient, yet dilutes a
    token mean); fewer when fewer are informative. ``rollout/groups_kept`` logs how many were."""
    oversample: int = 1
    """With ``filter_groups``: prompts sampled per step, as a multiple of ``prompts_per_step``."""
    max_reward_error_frac: float = 0.1
    """Stop the run when more than this share of a step's rewards are verifier errors (math-verify raised
    or its worker died; ``reward/error_frac``). The first error is warned about, whatever the share."""


@dataclass
class RolloutCorrectionConfig:
    """``objective.rollout_correction``: verl's ``algorithm.rollout_correction`` (docs/objectives.md,
    "Rollout corrections"), applied between the old log-probs (``update.old_logprobs``) and the
    sampler's. All off by default."""

    rollout_is: str | None = None
    """Importance weight ``π_old/π_sampler`` on the objective's terms: ``token``, ``sequence`` (the
    product over the response) or none. Needs old log-probs of their own: ``update.old_logprobs``
    ``proximal`` (decoupled PPO) or ``recompute``."""
    rollout_is_threshold: float | str = 2.0
    """A number ``U`` truncates the weight at ``U`` (TIS); ``"L_U"`` (e.g. ``0.5_5.0``) zeroes every
    weight outside ``[L, U]`` (IcePop)."""
    rollout_is_batch_normalize: bool = False
    """Divide the weights by their batch mean (per token or per sequence); needs ``rollout_is``."""
    rollout_rs: str | None = None
    """Rejection sampling: comma-separated criteria (``token_k1``, ``seq_mean_k3``, ... of
    ``sspo.ROLLOUT_RS``), all of which a token must pass; a rejected token leaves the loss and its counts."""
    rollout_rs_threshold: float | str | None = None
    """The rejection bounds: one for every criterion or one per criterion, comma-separated
    (``k1``: ``"L_U"`` or ``U`` for ``[1/U, U]``; ``k2``/``k3``: an upper bound). Needs ``rollout_rs``."""
    bypass_mode: bool = False
    """Centre the objective on the sampler's log-probs themselves (no old log-probs: ``update.old_logprobs``
    ``sampler`` or ``auto``); ``rollout_rs`` still rejects, by the current policy's distance to the sampler."""


@dataclass
class ObjectiveConfig:
    name: str = "sspo"
    """Objective: one of ``sspo.OBJECTIVES``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Objective hyperparameters (e.g. ``tau_pos``, ``tau_neg``, ``gate`` for sspo; ``eps_low``/``eps_high`` for grpo)."""
    loss_agg_mode: str | None = None
    """Aggregation mode (``None``: the objective's paper default)."""
    advantage: str = "grpo"
    """Group advantage: ``grpo`` (std-normalised), ``drgrpo`` or ``rloo``."""
    kl_coef: float = 0.0
    """β of the KL penalty to the initial (reference) policy; 0 disables it and the reference model."""
    kl_estimator: str = "k3"
    """KL estimator: ``k1``, ``k2`` or ``k3``."""
    entropy_coef: float = 0.0
    """Entropy bonus: ``loss -= entropy_coef · H``."""
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    """Importance weights and rejection for samples the sampler drew from another policy than the one
    the ratios are centred on (staleness, a sampler of its own precision); verl's names."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    warmup_steps: int = 0
    """Linear warm-up in optimizer updates."""
    schedule: str = "constant"
    """After warm-up: ``constant``, ``linear`` or ``cosine`` decay to 0 at the last update."""


@dataclass
class UpdateConfig:
    mini_batches: int = 2
    """K: the rollout batch is split into exactly K mini-batches (sizes differ by at most one row), one
    optimizer update each (all but the first update of a fresh rollout are off-policy). Groups come in
    a random order and stay whole when K divides P, so each prompt is encoded once per forward pass."""
    epochs: int = 1
    """Passes over the rollout batch."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward inside a mini-batch (gradient accumulation); ``None``: whole mini-batch."""
    staleness: int = 0
    """Rollouts are sampled by the policy of this many optimizer updates ago (stress off-policy learning)."""
    max_consecutive_nonfinite: int = 3
    """An update whose loss or gradient is not finite is skipped (no optimizer or scheduler step; counted
    in ``update/skipped_nonfinite``); after this many in a row the run stops with an error."""
    old_logprobs: str = "auto"
    """Old log-probs the ratios are centred on: ``recompute`` (a no-grad forward of the behaviour policy
    over the batch after sampling), ``sampler`` (the sampler's own, no extra forward; the first mini-batch
    of a fresh rollout takes its own detached log-probs, so its ratios are exactly 1), ``proximal``
    (decoupled PPO: a no-grad forward of the *current* policy at the start of the step's updates; the
    sampler's log-probs then go to ``objective.rollout_correction``), or ``auto``: ``sampler`` in
    float32, where sampler and trainer agree to ~1e-5, else ``recompute`` (in bf16 they differ by up to
    ~0.2 at the worst token). Whenever they are not the sampler's (``recompute``, ``proximal``), the
    sampler's are handed to the loss as ``rollout_log_probs`` too (``rollout_corr/kl`` is logged)."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate every this many steps (0: only before and after training)."""
    num_problems: int = 200
    """Held-out problems evaluated (greedy accuracy)."""
    pass_k: int = 0
    """Also report pass@k with k samples per problem at the rollout temperature (0: off)."""
    max_new_tokens: int | None = None
    """Longest evaluation response (``None``: the rollout's)."""
    batch_size: int = 256
    """Problems decoded at once."""


@dataclass
class WarmStartConfig:
    steps: int = 0
    """Supervised warm-start steps on the task's worked solutions before RL (0: none). The result is
    cached and reused (keyed by the model, task and these settings)."""
    batch_size: int = 32
    """Warm-start batch size."""
    lr: float = 3e-3
    """Warm-start (peak) learning rate."""
    schedule: str = "cosine"
    """Warm-start learning-rate schedule after its warm-up: ``cosine`` or ``linear`` decay to 0.1 × ``lr``, or
    ``constant``. A constant rate leaves the model where RL at ~1e-4 does not knock it off (see the demo)."""
    cache_dir: str | None = None
    """Where warm starts are cached (default ``$SSPO_CACHE`` or ``~/.cache/sspo``)."""


@dataclass
class TrainConfig:
    model: str = "tiny"
    """``tiny`` (built-in ~1M-parameter Qwen2, character tokenizer), ``tiny-4x`` (its 4x-parameter sibling),
    or a hub id or local path."""
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    async_: AsyncConfig = field(default_factory=AsyncConfig)
    """The ``async`` section (``async`` is a Python keyword): rollout workers beside the learner."""
    steps: int = 50
    """Training steps (one rollout batch each)."""
    time_budget_s: float | None = None
    """Stop after the step during which this many seconds of training passed (``None``: no limit)."""
    seed: int = 0
    """Seed of everything (model init, data order, sampling)."""
    out_dir: str = "runs/default"
    """Run directory (config, metrics.jsonl, TensorBoard events, checkpoints, plots)."""
    checkpoint_every: int = 10
    """Write a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept (oldest deleted)."""
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu`` or ``cuda``."""
    dtype: str = "auto"
    """``auto`` (fp32 on CPU, bf16 on GPU), ``float32`` or ``bfloat16``."""
    threads: int | None = None
    """torch CPU threads (``None``: torch's default)."""
    progress: bool = True
    """Show a live progress bar."""


# ----------------------------------------------------------------------------- loading
@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (from YAML or the command line) to ``annotation``; error names ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        if isinstance(value, str) and str in args and ("_" in value or "," in value):
            return value  # a band ("0.5_5.0") or a list ("2.0,0.01"), never Python's float("0.5_5") == 0.55
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: cannot be None")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return _build(annotation, value, path)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            number = float(value) if annotation is float else _to_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected {annotation.__name__}, got {value!r}") from None
        return number
    if annotation is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if origin is tuple:
        items = _yaml(value) if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or len(items) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(items, args)))
    if origin is dict:
        mapping = _yaml(value) if isinstance(value, str) else value
        if not isinstance(mapping, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(mapping)
    return value


def _to_int(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


SECTION_ALIASES = {"async": "async_"}
"""Section names that are Python keywords, and the attribute each is held under."""


def _build(cls, data: dict, prefix: str = ""):
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        key = SECTION_ALIASES.get(key, key) if cls is TrainConfig else key
        if key not in known:
            shown = {attribute: name for name, attribute in SECTION_ALIASES.items()}
            valid = sorted(shown.get(k, k) for k in known)
            raise ConfigError(f"{path}: unknown field; valid fields of {cls.__name__}: {', '.join(valid)}")
        kwargs[key] = _coerce(path, value, hints[key]) if not dataclasses.is_dataclass(hints[key]) else (
            _build(hints[key], value, f"{path}.") if isinstance(value, dict) else _coerce(path, value, hints[key])
        )  # fmt: skip
    return cls(**kwargs)


class Replace(dict):
    """A mapping given whole on the command line (``task.options={}``): it replaces, never merges."""


def parse_overrides(overrides: list[str]) -> dict:
    """``["rollout.temperature=0.8", "objective.params.tau_neg=1.5"]`` → nested dict (YAML-typed values).
    A mapping given whole (``task.options={max_steps: 2}``, ``objective.params={}``) replaces the old one."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        value = _yaml(raw) if raw else ""
        if isinstance(value, dict):
            value = Replace(value)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return nested


_OWN_OPTIONS = {"objective": "params", "task": "options"}
"""Sections whose option mapping belongs to their ``name``: a new name starts from its own defaults."""


def _merge(base: dict, update: dict) -> dict:
    """Deep merge. ``objective.params`` and ``task.options`` merge too, unless the section's ``name``
    changes (then the old ones are dropped: they may not exist for the new objective or task). A
    :class:`Replace` mapping replaces instead of merging."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Replace):
            out[key] = dict(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            previous = out[key]
            own = _OWN_OPTIONS.get(key)
            if own and "name" in value and value["name"] != previous.get("name"):
                previous = {k: v for k, v in previous.items() if k != own}
            out[key] = _merge(previous, value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict, *, check: bool = True) -> TrainConfig:
    """Build and (unless ``check=False``, for a mapping that was validated before) validate a
    :class:`TrainConfig` from a nested mapping."""
    config = _build(TrainConfig, data or {})
    if check:
        validate(config)
    return config


def to_dict(config: TrainConfig) -> dict:
    """Plain nested mapping (tuples as lists), YAML/JSON-ready; sections under their own names (``async``)."""
    plain = _plain(dataclasses.asdict(config))
    for name, attribute in SECTION_ALIASES.items():
        plain[name] = plain.pop(attribute)
    return plain


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_preset(name: str | Path) -> Path:
    """A YAML path, or the name of a built-in preset (``demo``, ``tiny``, ``qwen2.5-0.5b-gsm8k-sspo``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = PRESET_DIR / f"{name}.yaml" if not str(name).endswith(".yaml") else PRESET_DIR / path.name
    if builtin.is_file():
        return builtin
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config: {str(name)!r} is neither a file nor a built-in preset ({', '.join(names)})")


def read_preset(name: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML preset; an ``include: other.yaml`` key (relative to the file) is loaded first."""
    path = resolve_preset(name)
    if path.resolve() in _seen:
        raise ConfigError(f"config: include cycle through {str(path)!r}")
    loaded = _yaml(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config: {str(path)!r} must hold a mapping at top level")
    include = loaded.pop("include", None)
    if include is None:
        return loaded
    parent = path.parent / include
    return _merge(read_preset(parent if parent.is_file() else include, (*_seen, path.resolve())), loaded)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> TrainConfig:
    """Preset YAML file (or ``base``) merged with ``section.field=value`` overrides, validated."""
    data: dict = dict(base or {})
    if path is not None:
        data = _merge(data, read_preset(path))
    data = _merge(data, parse_overrides(overrides or []))
    return config_from_dict(data)


# ----------------------------------------------------------------------------- validation
def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def validate(config: TrainConfig) -> None:
    """Check every field before any work; raise :class:`ConfigError` naming the first bad one."""
    import sspo  # local: keep `sspo --help` free of torch

    from ..tasks import TASKS, TEMPLATES, is_code_task, task_splits

    t, r, o, p, u, e, w = (config.task, config.rollout, config.objective, config.optim, config.update,
                           config.eval, config.warm_start)  # fmt: skip
    _check_finite_numbers(config)
    check_model_source(config.model)
    _require(t.name in TASKS, "task.name", f"unknown task {t.name!r}; valid: {', '.join(TASKS)}")
    _require(t.template in TEMPLATES, "task.template", f"{t.template!r} is not one of {', '.join(TEMPLATES)}")
    _require(t.reward in TASK_REWARDS, "task.reward", f"{t.reward!r} is not one of {', '.join(TASK_REWARDS)}")
    kind, other = ("code", "answer_and_work") if is_code_task(t.name) else ("math", "partial")
    _require(t.reward != other, "task.reward", f"{t.reward!r} is not a reward of the {kind} task {t.name!r}; "
             f"use {' or '.join(r for r in TASK_REWARDS if r != other)}")  # fmt: skip
    for name, split in (("task.train_split", t.train_split), ("task.eval_split", t.eval_split)):
        _require(split in task_splits(t.name), name,
                 f"task {t.name!r} has no split {split!r}; valid: {', '.join(task_splits(t.name))}")  # fmt: skip
    _require(t.train_size is None or t.train_size > 0, "task.train_size", f"must be > 0, got {t.train_size}")
    _check_task_options(t.name, t.options)
    _require(r.prompts_per_step >= 1, "rollout.prompts_per_step", f"must be >= 1, got {r.prompts_per_step}")
    _require(r.samples_per_prompt >= 2, "rollout.samples_per_prompt",
             f"must be >= 2 (group advantages need a group), got {r.samples_per_prompt}")  # fmt: skip
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {r.max_new_tokens}")
    _require(r.temperature > 0, "rollout.temperature", f"must be > 0, got {r.temperature}")
    _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _require(r.backend in ("auto", "fast", "hf"), "rollout.backend", f"{r.backend!r} is not one of auto, fast, hf")
    _require(r.reward_timeout > 0, "rollout.reward_timeout", f"must be > 0, got {r.reward_timeout}")
    _require(r.code_memory_mb >= 64, "rollout.code_memory_mb", f"must be >= 64 (MiB), got {r.code_memory_mb}")
    _require(r.reward_workers is None or r.reward_workers >= 1, "rollout.reward_workers",
             f"must be >= 1 or none, got {r.reward_workers}")  # fmt: skip
    _require(r.sampler_dtype in SAMPLER_DTYPES, "rollout.sampler_dtype",
             f"{r.sampler_dtype!r} is not one of {', '.join(SAMPLER_DTYPES)}")  # fmt: skip
    corrected = o.rollout_correction.rollout_is is not None or o.rollout_correction.rollout_rs is not None
    _require(r.sampler_dtype == "same" or u.old_logprobs != "recompute" or corrected, "rollout.sampler_dtype",
             "a sampler of its own precision needs its own behaviour log-probs: set update.old_logprobs=auto or "
             "sampler, or correct for it (objective.rollout_correction.rollout_is or rollout_rs)")  # fmt: skip
    _require(r.truncated in TRUNCATED, "rollout.truncated", f"{r.truncated!r} is not one of {', '.join(TRUNCATED)}")
    _require(r.oversample >= 1, "rollout.oversample", f"must be >= 1, got {r.oversample}")
    _require(r.oversample == 1 or r.filter_groups, "rollout.oversample",
             "oversampling only changes a run with rollout.filter_groups=true; set it, or oversample=1")  # fmt: skip
    _require(0 <= r.max_reward_error_frac <= 1, "rollout.max_reward_error_frac",
             f"must be in [0, 1], got {r.max_reward_error_frac}")  # fmt: skip
    _require(o.name in sspo.OBJECTIVES, "objective.name", f"unknown objective {o.name!r}; valid: {', '.join(sspo.OBJECTIVES)}")
    _require(o.advantage in sspo.ADVANTAGE_METHODS, "objective.advantage",
             f"{o.advantage!r} is not one of {', '.join(sspo.ADVANTAGE_METHODS)}")  # fmt: skip
    _require(o.kl_coef >= 0, "objective.kl_coef", f"must be >= 0, got {o.kl_coef}")
    _require(o.kl_estimator in sspo.KL_ESTIMATORS, "objective.kl_estimator",
             f"{o.kl_estimator!r} is not one of {', '.join(sspo.KL_ESTIMATORS)}")  # fmt: skip
    _require(o.loss_agg_mode is None or o.loss_agg_mode in sspo.AGG_MODES, "objective.loss_agg_mode",
             f"{o.loss_agg_mode!r} is not one of {', '.join(sspo.AGG_MODES)}")  # fmt: skip
    _check_agg_mode(o)
    _check_objective_params(o)
    _check_rollout_correction(config)
    _require(p.lr > 0, "optim.lr", f"must be > 0, got {p.lr}")
    _require(p.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {p.weight_decay}")
    _require(all(0 <= b < 1 for b in p.betas), "optim.betas", f"must be in [0, 1), got {p.betas}")
    _require(p.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {p.grad_clip}")
    _require(p.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {p.warmup_steps}")
    _require(p.schedule in ("constant", "linear", "cosine"), "optim.schedule",
             f"{p.schedule!r} is not one of constant, linear, cosine")  # fmt: skip
    batch = r.prompts_per_step * r.samples_per_prompt
    _require(1 <= u.mini_batches <= batch, "update.mini_batches", f"must be in [1, P*G={batch}], got {u.mini_batches}")
    _require(u.epochs >= 1, "update.epochs", f"must be >= 1, got {u.epochs}")
    _require(u.micro_batch_size is None or u.micro_batch_size >= 1, "update.micro_batch_size",
             f"must be >= 1, got {u.micro_batch_size}")  # fmt: skip
    _require(u.staleness >= 0, "update.staleness", f"must be >= 0, got {u.staleness}")
    _require(u.max_consecutive_nonfinite >= 1, "update.max_consecutive_nonfinite",
             f"must be >= 1, got {u.max_consecutive_nonfinite}")  # fmt: skip
    _require(u.old_logprobs in OLD_LOGPROBS, "update.old_logprobs",
             f"{u.old_logprobs!r} is not one of {', '.join(OLD_LOGPROBS)}")  # fmt: skip
    gap = "update.staleness" if u.staleness else "rollout.sampler_dtype" if r.sampler_dtype != "same" else None
    _require(u.old_logprobs != "proximal" or gap is None or corrected, "update.old_logprobs",
             f"proximal centres the ratios on the current policy, so the sampler's distance to it ({gap}) would "
             "go uncorrected: add objective.rollout_correction.rollout_is=token (decoupled PPO) or rollout_rs, "
             "or set update.old_logprobs=sampler")  # fmt: skip
    check_async_config(config.async_)
    a = config.async_
    _require(not a.workers or u.staleness == 0, "async.workers",
             "rollout workers make the staleness real: set update.staleness=0 (it simulates it in one process)")  # fmt: skip
    _require(u.old_logprobs != "proximal" or not a.workers or a.max_staleness == 0 or corrected, "update.old_logprobs",
             "proximal centres the ratios on the current policy, so the workers' staleness (async.max_staleness) "
             "would go uncorrected: add objective.rollout_correction.rollout_is=token (decoupled PPO) or "
             "rollout_rs, or set update.old_logprobs=sampler")  # fmt: skip
    _require(e.every >= 0, "eval.every", f"must be >= 0, got {e.every}")
    _require(e.num_problems >= 1, "eval.num_problems", f"must be >= 1, got {e.num_problems}")
    _require(e.pass_k >= 0, "eval.pass_k", f"must be >= 0, got {e.pass_k}")
    _require(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
    _require(e.max_new_tokens is None or e.max_new_tokens >= 1, "eval.max_new_tokens",
             f"must be >= 1 or none (the rollout's), got {e.max_new_tokens}")  # fmt: skip
    _require(w.steps >= 0, "warm_start.steps", f"must be >= 0, got {w.steps}")
    _require(w.batch_size >= 1, "warm_start.batch_size", f"must be >= 1, got {w.batch_size}")
    _require(w.lr > 0, "warm_start.lr", f"must be > 0, got {w.lr}")
    _require(w.schedule in SFT_SCHEDULES, "warm_start.schedule", f"{w.schedule!r} is not one of {', '.join(SFT_SCHEDULES)}")
    _require(config.steps >= 1, "steps", f"must be >= 1, got {config.steps}")
    _require(config.time_budget_s is None or config.time_budget_s > 0, "time_budget_s", f"must be > 0, got {config.time_budget_s}")
    _require(config.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {config.checkpoint_every}")
    _require(config.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {config.keep_checkpoints}")
    _require(config.device in ("auto", "cpu", "cuda"), "device", f"{config.device!r} is not one of auto, cpu, cuda")
    _require(config.dtype in ("auto", "float32", "bfloat16"), "dtype", f"{config.dtype!r} is not one of auto, float32, bfloat16")
    _require(config.threads is None or config.threads >= 1, "threads", f"must be >= 1, got {config.threads}")
    _require(-(2**63) <= config.seed < 2**63, "seed", f"must be an int in [-2**63, 2**63), got {config.seed}")


_FINITE_HINTS = {"time_budget_s": " (none: no time limit)"}


def _check_finite_numbers(node: Any, path: str = "") -> None:
    """Every number anywhere in the config is finite: each field of each section, the items of a tuple
    (``optim.betas[1]``) and the values of ``task.options`` / ``objective.params``. ``.nan``, ``.inf``
    and ``-.inf`` (YAML) or ``nan``/``inf`` are a :class:`ConfigError` naming the field."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite_numbers(getattr(node, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_finite_numbers(value, f"{path}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_finite_numbers(value, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path}: must be a finite number{_FINITE_HINTS.get(path, '')}, got {node}")


def check_model_source(name: str) -> None:
    """``model`` must be ``tiny``, an existing directory, or look like a hub id (``owner/name``);
    :class:`ConfigError` otherwise. Whether a hub id can be fetched is known only when it is loaded."""
    from pathlib import Path as _Path

    from ..models.loading import TINY_SIZES

    if name in TINY_SIZES or _Path(name).expanduser().is_dir():
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip()
    if looks_local:
        raise ConfigError(f"model: {name!r} is not an existing directory; pass a directory holding config.json, "
                          "the weights and the tokenizer files, a hub id such as Qwen/Qwen2.5-0.5B-Instruct, "
                          "or 'tiny' for the built-in model")  # fmt: skip


_SPLITS_BY_FILE = ("gsm8k", "humaneval", "leetcode")
"""Data-set tasks whose splits are separate files: one file given as ``task.path`` is every split."""


def split_overlap(config: TrainConfig) -> str | None:
    """Why the problems trained on are (some of) those evaluated on, or ``None``: both splits the same
    (``task.train_split=test``), deepmath's ``all`` split beside another, or one file as ``task.path``
    of a task whose splits are files. The trainer prints it as one ``warning:`` line; not an error
    (HumanEval, for one, has only a test split)."""
    t = config.task
    if t.train_split == t.eval_split:
        what = f"task.train_split and task.eval_split are both {t.train_split!r}"
    elif t.name == "deepmath" and "all" in (t.train_split, t.eval_split):
        what = f"deepmath's split 'all' holds the other one (task.train_split {t.train_split!r}, task.eval_split {t.eval_split!r})"
    elif t.name in _SPLITS_BY_FILE and t.path and Path(t.path).expanduser().is_file():
        what = (f"task.path {t.path!r} is one file, so task.train_split {t.train_split!r} and task.eval_split "
                f"{t.eval_split!r} are the same problems")  # fmt: skip
    else:
        return None
    return (f"{what}: the run trains on the problems it is evaluated on, so eval/accuracy is not a held-out score; "
            "use two different splits (for task.path, a directory holding train.jsonl and test.jsonl)")  # fmt: skip


def check_out_dir(out_dir: str | Path) -> None:
    """``out_dir`` is, or can be made, a directory this process writes in: it is created if missing
    and a temporary file is written in it and removed. :class:`ConfigError` naming ``out_dir`` with
    the reason otherwise (a path under a file, ``/proc`` or ``/sys``, no permission, a full disk)."""
    import tempfile

    path = Path(out_dir)
    blocker = next((q for q in (path, *path.parents) if q.exists() and not q.is_dir()), None)
    try:
        if blocker is not None:
            reason = f"{str(blocker)!r} exists and is not a directory"
        else:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path, prefix=".sspo-write-check-"):
                reason = None
    except OSError as exc:
        reason = f"cannot create or write in it: {exc.strerror or exc}"
    if reason is not None:
        raise ConfigError(f"out_dir: {str(out_dir)!r} cannot hold the run ({reason}); choose a directory you can "
                          "write to, e.g. out_dir=runs/my-run")  # fmt: skip


def _check_task_options(name: str, options: dict) -> None:
    """Option names and values of task ``name`` (no data is loaded); the error names the option."""
    from ..tasks import check_task_options

    try:
        check_task_options(name, options)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        key = next((k for k in options if message.startswith(f"{k}:")), None)
        if key is None:  # a message that does not start with the option's name (SyntheticConfig's own)
            raise ConfigError(f"task.options: {message}") from None
        raise ConfigError(f"task.options.{key}:{message[len(key) + 1:]}") from None


def _check_agg_mode(o: ObjectiveConfig) -> None:
    """``objective.loss_agg_mode`` is one the objective takes (``sspo.get_objective(name).agg_modes``);
    the error gives the objective's own reason (sequence-level, or a length weighting of its own)."""
    import torch

    import sspo

    if o.loss_agg_mode is None or o.loss_agg_mode in sspo.get_objective(o.name).agg_modes:
        return
    lp = torch.zeros(1, 2)
    try:
        sspo.policy_loss(o.name, lp, lp, torch.ones(1), torch.ones(1, 2, dtype=torch.bool), loss_agg_mode=o.loss_agg_mode)
    except ValueError as exc:
        raise ConfigError(f"objective.loss_agg_mode: {exc}") from None
    raise ConfigError(f"objective.loss_agg_mode: {o.loss_agg_mode!r} is not one of "
                      f"{', '.join(sspo.get_objective(o.name).agg_modes)}")  # fmt: skip


def _check_rollout_correction(config: TrainConfig) -> None:
    """Each field of ``objective.rollout_correction`` on its own (the parsers of
    :mod:`sspo.objectives.rollout_correction` name what is wrong), then against ``update.old_logprobs``."""
    from ..objectives.rollout_correction import ROLLOUT_IS, parse_is_threshold, parse_rs

    rc, mode = config.objective.rollout_correction, config.update.old_logprobs
    name = "objective.rollout_correction."
    _require(rc.rollout_is is None or rc.rollout_is in ROLLOUT_IS, f"{name}rollout_is",
             f"{rc.rollout_is!r} is not one of none, {', '.join(ROLLOUT_IS)}")  # fmt: skip
    try:
        parse_is_threshold(rc.rollout_is_threshold)
    except ValueError as exc:
        raise ConfigError(f"{name}rollout_is_threshold: {exc}") from None
    _require(not rc.rollout_is_batch_normalize or rc.rollout_is is not None, f"{name}rollout_is_batch_normalize",
             "normalizes the importance weights, and there are none: set rollout_is too")  # fmt: skip
    _require(rc.rollout_rs is not None or rc.rollout_rs_threshold is None, f"{name}rollout_rs_threshold",
             f"{rc.rollout_rs_threshold!r} bounds no criterion: set rollout_rs too")  # fmt: skip
    if rc.rollout_rs is not None:
        try:
            parse_rs(rc.rollout_rs, rc.rollout_rs_threshold)
        except ValueError as exc:
            message = str(exc)
            bad = "rollout_rs_threshold" if "rollout_rs_threshold" in message else "rollout_rs"
            raise ConfigError(f"{name}{bad}: {message.removeprefix(f'{bad}: ')}") from None
    _require(not rc.bypass_mode or mode in ("auto", "sampler"), f"{name}bypass_mode",
             f"centres the objective on the sampler's log-probs, so update.old_logprobs={mode} would compute old "
             "log-probs that are never used: set update.old_logprobs=sampler")  # fmt: skip
    asked = "rollout_is" if rc.rollout_is is not None else "rollout_rs" if rc.rollout_rs is not None else None
    _require(asked is None or rc.bypass_mode or mode in ("recompute", "proximal"), f"{name}{asked}",
             f"corrects from the sampler to the old log-probs, and update.old_logprobs={mode} takes those from the "
             "sampler (the weights would all be 1): set update.old_logprobs=proximal (decoupled PPO) or "
             "recompute, or bypass_mode=true")  # fmt: skip


def _check_objective_params(o: ObjectiveConfig) -> None:
    """Run the objective once on a tiny tensor so its own checks name any bad hyperparameter."""
    import torch

    import sspo

    lp = torch.zeros(1, 2)
    try:
        sspo.policy_loss(o.name, lp, lp, torch.ones(1), torch.ones(1, 2, dtype=torch.bool),
                         loss_agg_mode=o.loss_agg_mode, **o.params)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"objective.params: {exc}") from None
