"""The off-policy group-RL training loop.

Per step: the behaviour policy (the policy of ``update.staleness`` updates ago) samples ``G``
responses for each of ``P`` prompts; rewards and group advantages follow; the batch is split into
exactly ``K`` mini-batches with one optimizer update each (``epochs`` times), so every update but the
first of a fresh rollout is off-policy. Data order, sampling and mini-batch splits draw on generators
seeded by ``(seed, step)``, which makes runs deterministic on CPU and resumable exactly.

Nothing fails silently: an update whose loss or gradient is not finite is skipped (no optimizer or
scheduler step) and counted, and the run stops after ``update.max_consecutive_nonfinite`` of them in a
row; an update with no signal (every advantage zero, no KL or entropy term) is skipped and counted;
non-finite weights are never checkpointed; verifier errors are warned about and stop the run past
``rollout.max_reward_error_frac``. Evaluation time is not training time (``time_budget_s``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..models.loading import ModelUnavailableError
from ..objectives import policy_loss, rollout_correction
from ..tasks import DatasetUnavailableError, load_task
from .checkpoint import (
    apply_checkpoint,
    checkpoint_dirs,
    match_file_mode,
    newest_intact_checkpoint,
    save_checkpoint,
    set_broken_aside,
)
from .config import ConfigError, TrainConfig, check_out_dir, split_overlap, to_dict, validate
from .evaluate import evaluate
from .metrics_log import MetricsLogger, Progress, set_metrics_aside, truncate_metrics
from .plots import plot_run
from .policy import response_logprobs, response_logprobs_no_grad
from .quiet import hf_progress_bars_off
from .rewards import task_reward
from .rollout import (
    add_learner_log_probs,
    groups_to_keep,
    logprob_mismatch,
    make_rollout,
    problems_for,
    sampled_prompts,
)
from .warm_start import prepare_model

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "final_metrics.json"


class TrainingError(RuntimeError):
    """The run stopped for a reason the user must fix (non-finite updates, a failing verifier)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; the message names the step and how to continue. Nothing is
    written on the way out: the checkpoints on disk are whole (each is renamed into place complete), so
    ``sspo resume`` continues exactly from the last of them."""

    def __init__(self, message: str, *, run_dir: Path, step: int, checkpoint_step: int | None):
        super().__init__(message)
        self.run_dir, self.step, self.checkpoint_step = run_dir, step, checkpoint_step


def seeded(seed: int, *keys: int, device="cpu") -> torch.Generator:
    """A generator seeded by ``(seed, *keys)`` (stateless: the same keys give the same stream)."""
    value = seed
    for k in keys:
        value = (value * 1_000_003 + k + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(value)


def lr_factor(update: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer update ``update`` (0-based)."""
    if warmup and update < warmup:
        return (update + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def progress_bound(steps: int, time_budget_s: float | None, step: int, elapsed: float) -> tuple[str, float, float, str]:
    """What the progress bar counts, as ``(unit, total, completed, label)``: ``steps``, unless a time
    budget is set and, at the mean training seconds per step so far, the steps would not fit in it;
    then ``seconds`` of training (the budget is what ends the run). Before the first step is timed,
    steps. The label names the other bound (``steps; time cap 240 s``)."""
    if time_budget_s is None:
        return "steps", steps, step, "steps"
    if step == 0 or elapsed / step * steps <= time_budget_s:
        return "steps", steps, step, f"steps; time cap {time_budget_s:g} s"
    return "seconds", time_budget_s, min(elapsed, time_budget_s), f"training seconds; at most {steps} steps"


def _to_device(batch, device: torch.device):
    """A worker's :class:`RolloutBatch` (on the CPU) with its tensors on the learner's ``device``."""
    if device.type == "cpu":
        return batch
    for name, value in vars(batch).items():
        if torch.is_tensor(value):
            setattr(batch, name, value.to(device))
    return batch


def _resolve_device(config: TrainConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if config.device == "auto" else config.device))  # fmt: skip
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but this machine has no CUDA device; run on a GPU machine, or "
                          "set device=cpu dtype=float32 to try the run on the CPU")  # fmt: skip
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return device, dtype


@dataclass
class _StepStats:
    values: dict[str, list] = field(default_factory=dict)

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, []).append(v.detach() if torch.is_tensor(v) else torch.tensor(float(v)))

    def means(self) -> dict[str, float]:
        return {k: float(torch.stack(v).float().mean()) for k, v in self.values.items()}


def load_problems(config: TrainConfig) -> tuple[list, list]:
    """``(train problems, held-out problems)`` of ``config.task``. Data that cannot be had (an
    unreachable hub id, a missing file, records without a required field) is a :class:`ConfigError`
    naming ``task.path`` (``task.options`` for a generated task)."""
    t = config.task
    try:
        train = load_task(t.name, t.train_split, path=t.path, limit=t.train_size, seed=config.seed, **t.options)
        held_out = load_task(t.name, t.eval_split, path=t.path, limit=config.eval.num_problems, seed=config.seed + 1,
                             **t.options)  # fmt: skip
    except (DatasetUnavailableError, OSError, ValueError) as exc:
        field = "task.options" if t.name in ("synthetic", "synthetic_code") else "task.path"
        raise ConfigError(f"{field}: {exc}") from exc
    for split, problems in ((t.train_split, train), (t.eval_split, held_out)):
        if not problems:
            raise ConfigError(f"task.path: task {t.name!r} has no problems in split {split!r} (after its options)")
    return train, held_out


class Trainer:
    """Builds everything a run needs from a validated :class:`TrainConfig`; :meth:`run` trains."""

    @hf_progress_bars_off()  # the library is quiet: no Hugging Face loading/saving bars (ours stays)
    def __init__(self, config: TrainConfig, *, resume: bool = False, log=print, checkpoint: dict | None = None):
        validate(config)
        check_out_dir(config.out_dir)  # before any data or model is loaded
        if (overlap := split_overlap(config)) is not None:
            log(f"warning: {overlap}")
        self.config = config
        self.log = log
        self.run_dir = Path(config.out_dir)
        existing = checkpoint_dirs(self.run_dir)
        if existing and not resume:
            raise FileExistsError(f"out_dir {str(self.run_dir)!r} already holds a run; use `sspo resume {self.run_dir}` "
                                  "or choose another out_dir")  # fmt: skip
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.device, self.dtype = _resolve_device(config)
        self.train_problems, self.eval_problems = load_problems(config)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

        try:
            self.model, self.tokenizer, self.model_info = prepare_model(config, dtype=self.dtype, device=self.device, log=log)
        except ModelUnavailableError as exc:
            raise ConfigError(f"model: {exc}") from exc
        self.model.eval()  # no dropout: ratios of the first update start at exactly 1
        try:
            self.scorer = task_reward(config)
            """The task's reward (:mod:`sspo.trainer.rewards`): final answers, or programs run against tests."""
        except RuntimeError as exc:  # code rewards need Linux
            raise ConfigError(f"task.name: {exc}") from exc
        self.updates_per_step = config.update.mini_batches * config.update.epochs
        mode = config.update.old_logprobs
        sampler_dtype = config.rollout.sampler_dtype
        self.sampler_dtype = None if sampler_dtype in ("same", str(self.dtype).removeprefix("torch.")) else getattr(torch, sampler_dtype)
        """The train–inference mismatch: the sampler's own precision (``None``: it is the trained model's)."""
        self.sampler_copy = None
        rc = config.objective.rollout_correction
        if mode == "auto":  # bypass and a sampler of its own precision centre on the sampler's log-probs
            own_sampler = rc.bypass_mode or self.sampler_dtype is not None or self.dtype == torch.float32
            mode = "sampler" if own_sampler else "recompute"
        self.old_logprobs = mode
        """``update.old_logprobs`` resolved: ``sampler``, ``recompute`` or ``proximal``."""
        self.recompute_old = mode == "recompute"
        self.correction = {"rollout_is": rc.rollout_is, "rollout_is_threshold": rc.rollout_is_threshold,
                           "rollout_is_batch_normalize": rc.rollout_is_batch_normalize, "rollout_rs": rc.rollout_rs,
                           "rollout_rs_threshold": rc.rollout_rs_threshold, "bypass_mode": rc.bypass_mode}  # fmt: skip
        """``policy_loss``'s rollout-correction arguments (``objective.rollout_correction``)."""
        asked = rc.rollout_is is not None or rc.rollout_rs is not None or rc.bypass_mode
        self.pass_rollout = asked or mode in ("recompute", "proximal")
        """Whether the loss gets the sampler's log-probs as ``rollout_log_probs``: a correction is asked
        for, or the old log-probs are not the sampler's (with neither, the call is the plain one)."""
        self.total_updates = config.steps * self.updates_per_step
        o = config.optim
        # fused: one kernel for all parameters (about 6x faster than foreach for a 0.8M model on CPU)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                           fused=self.device.type in ("cpu", "cuda"))  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda u: lr_factor(u, self.total_updates, o.warmup_steps, o.schedule)
        )
        self.optimizer.zero_grad(set_to_none=True)  # a model handed over with gradients must not leak them into update 1
        self.reference = self._frozen_copy() if config.objective.kl_coef > 0 else None
        self.behaviour = self._frozen_copy() if config.update.staleness > 0 else None
        self.history: deque[dict] = deque(maxlen=config.update.staleness + 1)
        self.rollouts = None
        """The :class:`~sspo.trainer.asynchronous.RolloutScheduler` while a run with ``async.workers > 0`` trains."""
        self.step = 0
        self.updates = 0
        self.elapsed = 0.0
        self.nonfinite_in_a_row = 0
        self._warned: set[str] = set()
        self.accuracy_before: float | None = None
        if resume and existing and checkpoint is None:
            checkpoint = intact_checkpoint(self.run_dir, log)
        if resume and checkpoint is not None:
            try:
                state, snapshots = apply_checkpoint(checkpoint, model=self.model, optimizer=self.optimizer,
                                                    scheduler=self.scheduler)  # fmt: skip
            except (RuntimeError, ValueError, KeyError) as exc:  # a model or optimizer of another shape
                raise ConfigError(f"run_dir: checkpoint {checkpoint['path']} does not fit this configuration "
                                  f"({' '.join(str(exc).split())[:300]})") from exc  # fmt: skip
            self._apply_optim_changes(state["step"])
            self.step, self.updates, self.elapsed = state["step"], state["updates"], state["elapsed"]
            self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
            self.accuracy_before = state.get("accuracy_before")
            self.history.extend(snapshots)
            moved = truncate_metrics(self.run_dir, self.step, state.get("metric_rows"))
            log(f"resumed {self.run_dir} at step {self.step} ({moved} later metric rows will be re-run)")
        elif self.behaviour is not None:
            self.history.append(self._snapshot())
        fresh_over_old = not resume and set_metrics_aside(self.run_dir, log)
        self.logger = MetricsLogger(self.run_dir, purge_step=self.step + 1 if self.step else (1 if fresh_over_old else None))

    # ------------------------------------------------------------------ helpers
    def _apply_optim_changes(self, step: int) -> None:
        """After loading a checkpoint: an ``optim.lr``, ``betas`` or ``weight_decay`` that differs from
        the checkpoint's (``sspo resume --allow-changes``) takes effect, instead of being overwritten
        by the optimizer and scheduler state the checkpoint restored."""
        o = self.config.optim
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            if base != o.lr:
                self.log(f"optim.lr: {base:g} -> {o.lr:g} from step {step + 1}")
                group["lr"] *= o.lr / base
                group["initial_lr"] = o.lr
            group["betas"], group["weight_decay"] = tuple(o.betas), o.weight_decay
        self.scheduler.base_lrs = [o.lr for _ in self.optimizer.param_groups]
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _span(self, kind: str, step: int):
        """A span of the learner's lane on the asynchronous run's timeline (nothing in a synchronous run)."""
        return self.rollouts.timeline.span(kind, step=step) if self.rollouts is not None else contextlib.nullcontext()

    def _rollout_workers(self):
        """``async.workers`` rollout processes for the steps still to train (a context: no process outlives
        it), or nothing for the synchronous trainer."""
        a = self.config.async_
        if not a.workers:
            return contextlib.nullcontext()
        from .asynchronous import RolloutScheduler, WeightChannel, WorkerSpec
        from .asynchronous.trainer_rollout import TrainerRollout, policy_copy

        rollout = TrainerRollout(self.config, self.tokenizer, self.train_problems, self.recompute_old)
        spec = WorkerSpec(policy_copy(self.model, self.sampler_dtype), rollout, torch_threads=1)
        channel = WeightChannel(self.model, version=self.updates)
        return RolloutScheduler.from_config(a, spec, channel, updates_per_step=self.updates_per_step,
                                            first_step=self.step + 1, log=self.log)  # fmt: skip

    def _frozen_copy(self):
        clone = copy.deepcopy(self.model).eval()
        for p in clone.parameters():
            p.requires_grad_(False)
        return clone

    def _snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _behaviour_model(self):
        if self.behaviour is None:
            return self.model
        self.behaviour.load_state_dict(self.history[0])
        return self.behaviour

    def _sampler(self):
        """The model that samples: the behaviour policy, or its copy in ``rollout.sampler_dtype``."""
        behaviour = self._behaviour_model()
        if self.sampler_dtype is None:
            return behaviour
        if self.sampler_copy is None:
            self.sampler_copy = copy.deepcopy(behaviour).to(self.sampler_dtype).eval()
        self.sampler_copy.load_state_dict(behaviour.state_dict())  # copy_ casts to the sampler's precision
        return self.sampler_copy

    def _problems_for(self, step: int) -> list:
        return problems_for(self.train_problems, self.config.seed, sampled_prompts(self.config.rollout), step)

    def _evaluate(self) -> dict[str, float]:
        c = self.config
        return evaluate(
            self.model, self.tokenizer, self.eval_problems, self.scorer,
            max_new_tokens=c.eval.max_new_tokens or c.rollout.max_new_tokens, template=c.task.template,
            pass_k=c.eval.pass_k, temperature=c.rollout.temperature, batch_size=c.eval.batch_size,
            seed=c.seed, backend=c.rollout.backend,
        )  # fmt: skip

    # ------------------------------------------------------------------ one step
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log(f"warning: {message}")

    def _check_rewards(self, step: int, metrics: dict) -> None:
        """Warn on the first verifier error and on rewarded truncations; stop when too many rewards errored."""
        c = self.config.rollout
        share = metrics.get("reward/error_frac", 0.0)
        if share > 0:
            detail = f" ({self.scorer.last_error})" if self.scorer.last_error else ""
            self._warn_once("reward_error", f"step {step}: {share:.0%} of the rewards are verifier errors, not "
                                            f"answers{detail}; see reward/error_frac")  # fmt: skip
            if share > c.max_reward_error_frac:
                hint = getattr(self.scorer, "error_hint", "fix the verifier")
                raise TrainingError(f"rollout.max_reward_error_frac: {share:.0%} of step {step}'s rewards are verifier "
                                    f"errors (more than {c.max_reward_error_frac:.0%}){detail}; {hint}, "
                                    "or raise rollout.max_reward_error_frac")  # fmt: skip
        if c.truncated == "score" and metrics.get("reward/truncated_rewarded_frac", 0.0) > 0:
            self._warn_once("truncated", f"step {step}: responses cut off at rollout.max_new_tokens were rewarded "
                                         "(rollout.truncated=score); `drop` or `zero` stops that")  # fmt: skip

    def mini_batches(self, step: int, epoch: int, n: int) -> list[torch.Tensor]:
        """Exactly ``K`` row sets covering ``n`` rows once (sizes differ by at most one): groups in a
        seeded random order, so mini-batches hold whole groups whenever ``K`` divides ``P``."""
        g = self.config.rollout.samples_per_prompt
        order = torch.randperm(n // g, generator=seeded(self.config.seed, 3, step, epoch))
        rows = (order[:, None] * g + torch.arange(g)).flatten()
        return list(rows.tensor_split(self.config.update.mini_batches))

    def train_step(self, step: int) -> dict[str, float]:
        """Rollout + ``K × epochs`` updates; returns the step's metrics."""
        c = self.config
        t0 = time.perf_counter()
        proximal = self.model if self.old_logprobs == "proximal" else None
        fresh = True  # the samples come from the current weights
        if self.rollouts is None:
            batch = make_rollout(
                self._sampler(), self.tokenizer, self._problems_for(step), self.scorer,
                samples_per_prompt=c.rollout.samples_per_prompt, max_new_tokens=c.rollout.max_new_tokens,
                temperature=c.rollout.temperature, top_p=c.rollout.top_p, template=c.task.template,
                advantage=c.objective.advantage, generator=seeded(c.seed, 2, step, device=self.device),
                backend=c.rollout.backend, reference=self.reference, recompute=self.recompute_old,
                truncated=c.rollout.truncated, proximal=proximal,
                keep_groups=groups_to_keep(c.rollout),
            )  # fmt: skip
            async_metrics = {}
        else:  # a worker sampled and scored it; the learner adds the forwards that need its own models
            from .asynchronous import AsyncWorkerError

            try:
                got = self.rollouts.get(step)
            except AsyncWorkerError as exc:  # one line for the user; the worker's traceback went to the log
                raise TrainingError(str(exc)) from exc
            batch = add_learner_log_probs(_to_device(got.batch, self.device), reference=self.reference,
                                          proximal=proximal, temperature=c.rollout.temperature)  # fmt: skip
            fresh, async_metrics = got.staleness == 0, got.metrics
        self._check_rewards(step, batch.metrics)
        t_rollout = time.perf_counter() - t0
        stats = _StepStats()
        first_dev = None
        counts = {"applied": 0, "skipped_zero_signal": 0, "skipped_nonfinite": 0}
        for epoch in range(c.update.epochs):
            for idx in self.mini_batches(step, epoch, batch.input_ids.shape[0]):
                if idx.numel() == 0:  # dynamic sampling kept fewer rows than there are mini-batches
                    counts["skipped_zero_signal"] += 1
                    continue
                # without a recompute, the policy is its own behaviour policy until its first applied update
                own = (counts["applied"] == 0 and self.old_logprobs == "sampler" and self.behaviour is None
                       and self.sampler_dtype is None and fresh)
                with self._span("update", step):
                    metrics, outcome = self._update(batch, idx, old_from_self=own)
                counts[outcome] += 1
                if metrics is None:
                    continue
                if first_dev is None:
                    first_dev = max(abs(metrics["ratio/max"].item() - 1), abs(metrics["ratio/min"].item() - 1))
                stats.add(metrics)
        t_total = time.perf_counter() - t0
        out = stats.means()
        out.update(batch.metrics)
        out.update(async_metrics)
        out.update({f"update/{k}": float(v) for k, v in counts.items()})
        out.update({
            "ratio/first_update_max_dev": first_dev, "lr": self.scheduler.get_last_lr()[0],
            "time/rollout_s": t_rollout, "time/update_s": t_total - t_rollout, "time/step_s": t_total,
            "throughput/tokens_per_s": batch.metrics["rollout/tokens"] / t_total,
            "throughput/samples_per_s": batch.input_ids.shape[0] / t_total,
        })  # fmt: skip
        return out

    def _has_signal(self, advantages: torch.Tensor, mask: torch.Tensor) -> bool:
        """Whether an update on these rows can change the policy: some valid row has a non-zero
        advantage, or a KL or entropy term acts on its own."""
        o = self.config.objective
        if o.kl_coef > 0 or o.entropy_coef != 0:
            return bool(mask.any())
        rows = mask.any(-1)
        adv = advantages if advantages.dim() == 1 else advantages.masked_fill(~mask, 0).abs().amax(-1)
        return bool((adv[rows] != 0).any())

    def _update(self, batch, idx: torch.Tensor, old_from_self: bool = False) -> tuple[dict | None, str]:
        """One optimizer update on mini-batch rows ``idx`` (micro-batched, globally normalised).
        ``old_from_self``: the model is still the behaviour policy, so its detached log-probs replace
        the sampler's in ``batch.old_log_probs`` (ratios exactly 1; the sampler's drift is reported).
        Returns ``(metrics, outcome)``: ``applied``; ``skipped_zero_signal`` (no forward, metrics
        ``None``); ``skipped_nonfinite`` (loss or gradient not finite: no optimizer or scheduler step)."""
        c = self.config
        o = c.objective
        mask = batch.response_mask[idx]
        micro = c.update.micro_batch_size or len(idx)
        bypass, rejects = self.correction["bypass_mode"], self.correction["rollout_rs"] is not None
        if rejects and not bypass:  # the tokens the rejection keeps, known before any forward
            mask = self._kept(batch.old_log_probs[idx], batch, idx)
        if not self._has_signal(batch.advantages[idx], mask):
            return None, "skipped_zero_signal"
        norms = {"global_num_tokens": mask.sum(), "global_num_seqs": mask.any(-1).sum()}
        if rejects and bypass:  # rejection by the current policy's distance to the sampler
            norms = (dict.fromkeys(norms) if micro >= len(idx)  # one forward: the loss counts them itself
                     else self._bypass_norms(batch, idx, micro))  # fmt: skip
        extra = {"rollout_log_probs": None, **self.correction} if self.pass_rollout else {}
        collected = _StepStats()
        finite = torch.ones((), dtype=torch.bool, device=mask.device)
        drift = []
        for part in idx.split(micro):
            mb = batch.select(part)
            logp, entropy = response_logprobs(self.model, mb["input_ids"], mb["attention_mask"], mb["response_ids"],
                                              temperature=c.rollout.temperature, groups=mb["groups"])  # fmt: skip
            if old_from_self:
                own = torch.where(mb["response_mask"], logp.detach(), torch.zeros_like(logp))
                collected.add({"rollout/logprob_mismatch_max": logprob_mismatch(own, mb["old_log_probs"], mb["response_mask"])})
                batch.old_log_probs[part, : own.shape[1]] = own
                mb["old_log_probs"] = own
            if extra:
                extra["rollout_log_probs"] = mb["rollout_log_probs"]
            out = policy_loss(
                o.name, logp, mb["old_log_probs"], mb["advantages"], mb["response_mask"],
                loss_agg_mode=o.loss_agg_mode, kl_coef=o.kl_coef, ref_log_probs=mb["ref_log_probs"],
                kl_estimator=o.kl_estimator, entropy=entropy, entropy_coef=o.entropy_coef, **norms, **o.params,
                **extra,
            )  # fmt: skip
            out.loss.backward()
            centre = mb["rollout_log_probs"] if bypass else mb["old_log_probs"]
            drift.append((logp.detach().float() - centre.float())[mb["response_mask"]].abs())
            finite = finite & torch.isfinite(out.loss.detach())
            collected.add({**out.metrics, "loss": out.loss.detach()})
        clip = c.optim.grad_clip if c.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        applied = bool(finite & torch.isfinite(grad_norm))
        if applied:
            self.optimizer.step()
            self.scheduler.step()
            self.updates += 1
            self.nonfinite_in_a_row = 0
            if self.behaviour is not None:
                self.history.append(self._snapshot())
            if self.rollouts is not None:  # the workers sample with these weights from now on
                self.rollouts.publish(self.model, self.updates)
        else:
            self.nonfinite_in_a_row += 1
            self.log(f"warning: step {self.step}: update skipped, its loss or gradient is not finite "
                     f"(loss {float(torch.stack(collected.values['loss']).sum()):.4g}, grad norm {float(grad_norm):.4g}); "
                     f"{self.nonfinite_in_a_row} in a row")  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite_in_a_row >= c.update.max_consecutive_nonfinite:
            raise TrainingError(f"update.max_consecutive_nonfinite: {self.nonfinite_in_a_row} updates in a row had a "
                                f"non-finite loss or gradient (step {self.step}); the weights were left as they were "
                                "before the first of them. Lower optim.lr, check the data, or raise the limit")  # fmt: skip
        metrics = {k: torch.stack(v).float().mean() for k, v in collected.values.items()}
        for key in ("ratio/max", "seq_weight/max", "rollout/logprob_mismatch_max", "rollout_corr/is_max"):
            if key in collected.values:
                metrics[key] = torch.stack(collected.values[key]).max()
        for key in ("ratio/min", "seq_weight/min", "rollout_corr/is_min"):
            if key in collected.values:
                metrics[key] = torch.stack(collected.values[key]).min()
        metrics["grad_norm"] = grad_norm.detach()
        drift = torch.cat(drift)
        if drift.numel():  # |Δ| quantiles over the update's valid tokens (the log-ratio the objective sees, unclamped)
            metrics["drift/abs_log_ratio_p50"], metrics["drift/abs_log_ratio_p99"] = torch.quantile(
                drift, torch.tensor([0.5, 0.99], dtype=drift.dtype, device=drift.device))
        return metrics, "applied" if applied else "skipped_nonfinite"

    def _kept(self, centre: torch.Tensor, batch, idx: torch.Tensor) -> torch.Tensor:
        """``[len(idx), T]``: the response tokens of rows ``idx`` that ``rollout_rs`` keeps, with the
        ratios centred on ``centre`` (what :func:`sspo.rollout_correction` gives the loss)."""
        options = {k: self.correction[k] for k in ("rollout_rs", "rollout_rs_threshold")}
        return rollout_correction(centre, batch.rollout_log_probs[idx], batch.response_mask[idx], **options).mask

    def _bypass_norms(self, batch, idx: torch.Tensor, micro: int) -> dict:
        """The global token and sequence counts of a micro-batched update in bypass mode with
        ``rollout_rs``: the rejection depends on the current policy, so a no-grad forward of the
        mini-batch (``micro`` rows at a time) gives the tokens it keeps before the first backward."""
        c = self.config
        current = torch.zeros_like(batch.rollout_log_probs[idx])
        for start, part in zip(range(0, len(idx), micro), idx.split(micro), strict=True):
            mb = batch.select(part)
            logp = response_logprobs_no_grad(self.model, mb["input_ids"], mb["attention_mask"], mb["response_ids"],
                                             temperature=c.rollout.temperature, groups=mb["groups"])  # fmt: skip
            current[start : start + len(part), : logp.shape[1]] = logp
        kept = self._kept(current, batch, idx)
        return {"global_num_tokens": kept.sum(), "global_num_seqs": kept.any(-1).sum()}

    # ------------------------------------------------------------------ the run
    def _require_finite_weights(self, what: str) -> None:
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingError(f"{what}: refused, {len(bad)} weight tensor(s) hold non-finite values "
                                f"(first: {bad[0]}); {self._lower_lr_hint()}")  # fmt: skip

    def _lower_lr_hint(self) -> str:
        if checkpoint_dirs(self.run_dir):
            return (f"the last checkpoint is intact: resume from it with a lower rate, `sspo resume {self.run_dir} "
                    f"--allow-changes optim.lr=...`")  # fmt: skip
        return (f"no checkpoint was written yet: start again with a lower rate, `sspo train --config "
                f"{self.run_dir / CONFIG_FILE} optim.lr=... out_dir=NEW_DIR`")  # fmt: skip

    def _plot_timeline(self) -> None:
        """``plots/timeline.png``: one lane per process (learner, workers), what each did over wall time."""
        try:
            self.rollouts.timeline.plot(self.run_dir / "plots" / "timeline.png",
                                        title=f"{self.config.objective.name}: {self.config.async_.workers} rollout "
                                              f"worker(s), max_staleness {self.config.async_.max_staleness}")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a plot never fails a run
            self.log(f"warning: the timeline plot failed ({exc})")

    def _checkpoint(self) -> None:
        self._require_finite_weights(f"checkpoint of step {self.step}")
        save_checkpoint(
            self.run_dir, step=self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            snapshots=list(self.history) if self.behaviour is not None else [], keep=self.config.keep_checkpoints,
            trainer_state={"updates": self.updates, "elapsed": self.elapsed, "accuracy_before": self.accuracy_before,
                           "metric_rows": self.logger.rows, "nonfinite_in_a_row": self.nonfinite_in_a_row},
        )  # fmt: skip

    @hf_progress_bars_off()
    def run(self) -> dict:
        """Train to ``steps`` (or the time budget) and return the final metrics. Ctrl-C raises
        :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) saying how to continue."""
        try:
            return self._run()
        except KeyboardInterrupt as exc:
            raise self._interrupted() from exc

    def _interrupted(self) -> TrainingInterrupted:
        try:
            self.scorer.close()
        except BaseException:  # noqa: BLE001 - a second Ctrl-C, or a worker already gone: leaving anyway
            pass
        ckpts = checkpoint_dirs(self.run_dir)
        last = int(ckpts[-1].name.removeprefix("step_")) if ckpts else None
        where = f"interrupted at step {self.step}"
        if last is None:
            message = (f"{where}, before the first checkpoint (checkpoint_every={self.config.checkpoint_every}), "
                       f"so there is nothing to resume; start again with: sspo train --config "
                       f"{self.run_dir / CONFIG_FILE} out_dir=NEW_DIR")  # fmt: skip
        else:
            message = f"{where} (last checkpoint: step {last}); continue with: sspo resume {self.run_dir}"
        return TrainingInterrupted(message, run_dir=self.run_dir, step=self.step, checkpoint_step=last)

    def _run(self) -> dict:
        c = self.config
        wall0 = time.perf_counter()
        if self.step == 0:
            before = self._evaluate()
            self.accuracy_before = before["eval/accuracy"]
            self.logger.log(0, before)
            self.log(f"held-out greedy accuracy before training: {self.accuracy_before:.3f}")
        # the bar counts the bound expected to end the run: steps, or training seconds when a time budget
        # is set and the steps would overrun it at the mean step time so far (progress_bound)
        _, total, done, label = progress_bound(c.steps, c.time_budget_s, self.step, self.elapsed)
        progress = Progress(total, enabled=c.progress, description=f"{c.objective.name} ({label})", completed=done)
        stopped = "steps"
        workers = self._rollout_workers()
        try:
            self.rollouts = workers.__enter__()
            while self.step < c.steps:
                t0 = time.perf_counter()
                self.step += 1
                metrics = self.train_step(self.step)
                trained = time.perf_counter() - t0
                if c.eval.every and self.step % c.eval.every == 0 and self.step < c.steps:
                    metrics.update(self._evaluate())
                    metrics["time/eval_s"] = time.perf_counter() - t0 - trained
                self.elapsed += trained  # evaluation is not training time (nor is it for the supervised control)
                metrics["time/elapsed_s"] = self.elapsed
                self.logger.log(self.step, metrics)
                _, total, done, label = progress_bound(c.steps, c.time_budget_s, self.step, self.elapsed)
                progress.set_bound(total, done, f"{c.objective.name} ({label})")
                progress.update(0, step=self.step, reward=metrics.get("reward/mean"), acc=metrics.get("eval/accuracy"))
                over_budget = c.time_budget_s is not None and self.elapsed >= c.time_budget_s
                if self.step % c.checkpoint_every == 0 or self.step == c.steps or over_budget:
                    self._checkpoint()
                if over_budget:
                    stopped = "time_budget"
                    break
        except BaseException as exc:
            workers.__exit__(type(exc), exc, exc.__traceback__)  # kills the workers at once
            raise
        else:
            workers.__exit__(None, None, None)
        finally:
            if self.rollouts is not None:
                self._plot_timeline()
            self.rollouts = None
            progress.close()
        final = self._evaluate()
        self.logger.log(self.step, final)
        self.logger.close()
        export = self.run_dir / "final_model"
        self._require_finite_weights("final_model export")
        self.model.save_pretrained(export)
        self.tokenizer.save_pretrained(export)
        match_file_mode(*export.rglob("*"))  # safetensors writes 0o600
        plot = plot_run(self.run_dir)
        self.scorer.close()
        summary = {
            "objective": c.objective.name, "steps": self.step, "stopped": stopped,
            "accuracy_before": self.accuracy_before, "accuracy_after": final["eval/accuracy"],
            **{k: v for k, v in final.items() if k != "eval/accuracy"},
            "train_seconds": self.elapsed, "wall_seconds": time.perf_counter() - wall0,
            "warm_start": self.model_info, "plot": str(plot), "final_model": str(export),
        }  # fmt: skip
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        return summary


def train(config: TrainConfig, *, log=print) -> dict:
    """Run a training job from a config; returns the run's final metrics (also in ``final_metrics.json``)."""
    return Trainer(config, log=log).run()


RESUMABLE = ("steps", "time_budget_s", "checkpoint_every", "keep_checkpoints", "progress", "threads", "out_dir",
             "async.workers", "async.worker_timeout_s",
             "eval.", "rollout.reward_workers", "rollout.reward_timeout", "rollout.code_memory_mb",
             "rollout.max_reward_error_frac", "rollout.backend", "update.max_consecutive_nonfinite",
             "update.micro_batch_size", "warm_start.cache_dir")  # fmt: skip
"""What ``sspo resume`` may change (a trailing dot: the whole section): how long to train, how often to
checkpoint and evaluate, evaluation sizes, resources and safety limits, none of which changes what is
trained (micro-batching never changes the gradient). Anything else (model, seed, dtype, device, task,
objective, optimizer, rollout and update shapes, warm start) makes the resumed run no continuation of
the one on disk, and needs ``allow_changes`` (``sspo resume --allow-changes``)."""

_UNSET = object()


def _flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):  # each key on its own (an empty mapping adds none)
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: TrainConfig, new: TrainConfig) -> list[tuple[str, object, object]]:
    """``(field, old value, new value)`` for every field that differs (``objective.params.tau_pos``:
    each key of a mapping on its own; a missing one is :data:`_UNSET`), in the config's order."""
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k, _UNSET), b.get(k, _UNSET)) for k in keys if a.get(k, _UNSET) != b.get(k, _UNSET)]


def _resumable(field: str) -> bool:
    return any(field == r or (r.endswith(".") and field.startswith(r)) for r in RESUMABLE)


def _show(value) -> str:
    return "unset" if value is _UNSET else repr(value)


def intact_checkpoint(run_dir: Path, log=print) -> dict | None:
    """The newest checkpoint of ``run_dir`` that reads back whole (``None``: there is none at all).
    Each newer one that does not is logged (one line: which file, why) and set aside as
    ``broken-step_NNNNNN``; when not one reads back, a :class:`TrainingError` lists them."""
    checkpoint, skipped = newest_intact_checkpoint(run_dir)
    if checkpoint is None and skipped:
        why = "; ".join(f"{path.name}: {reason}" for path, reason in skipped)
        raise TrainingError(f"run_dir: no checkpoint of {run_dir} reads back whole ({why}); there is nothing to "
                            f"resume from: start again with: sspo train --config {Path(run_dir) / CONFIG_FILE} "
                            "out_dir=NEW_DIR")  # fmt: skip
    for path, reason in skipped:
        aside = set_broken_aside(path)
        log(f"warning: skipped checkpoint {path.name}, it does not read back ({reason}); set aside as {aside.name}")
    return checkpoint


def resume(run_dir: str | Path, *, log=print, overrides: list[str] | None = None, allow_changes: bool = False) -> dict:
    """Continue the run in ``run_dir`` from its newest intact checkpoint with its saved config.

    ``overrides`` may change what :data:`RESUMABLE` lists (``steps=200`` extends a run); any other change
    is a :class:`ConfigError` naming the fields, unless ``allow_changes``. A run with no checkpoint is an
    error (nothing to resume), not a fresh start. A run that is complete (``final_metrics.json`` written
    and its steps or time budget reached) is left as it is: its summary is returned, nothing is rewritten."""
    import shlex

    from .config import config_from_dict, load_config, read_preset

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {run_dir!s} has no {CONFIG_FILE}, so it is not a run directory; "
                                "pass the out_dir of an earlier `sspo train`")
    overrides = list(overrides or [])
    config = load_config(path, [f"out_dir={run_dir}", *overrides])
    again = shlex.join(["sspo", "train", "--config", str(path), *[o for o in overrides if not o.startswith("out_dir=")],
                        "out_dir=NEW_DIR"])  # fmt: skip
    if not checkpoint_dirs(run_dir):
        raise FileNotFoundError(f"run_dir: {run_dir} has a {CONFIG_FILE} but no checkpoint to resume from (the run "
                                f"stopped before its first, at step checkpoint_every={config.checkpoint_every}); "
                                f"start it again with: {again}")  # fmt: skip
    saved = config_from_dict({**read_preset(path), "out_dir": str(run_dir)}, check=False)
    changes = [c for c in config_changes(saved, config) if not _resumable(c[0])]
    if changes and not allow_changes:
        what = "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in changes)
        raise ConfigError(f"{', '.join(k for k, _, _ in changes)}: resume continues the run as it was trained and "
                          f"will not change what it was trained with ({what}); pass --allow-changes to resume with "
                          f"the change anyway, or start a new run: {again}")  # fmt: skip
    checkpoint = intact_checkpoint(run_dir, log)
    state = checkpoint["trainer_state"]
    summary_path = run_dir / SUMMARY_FILE
    over_budget = config.time_budget_s is not None and state["elapsed"] >= config.time_budget_s
    if summary_path.is_file() and (state["step"] >= config.steps or over_budget):
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            summary = None
        if isinstance(summary, dict) and summary.get("steps") == state["step"]:
            reached = (f"its time budget is spent ({state['elapsed']:.0f} of time_budget_s={config.time_budget_s:g} s)"
                       if over_budget else f"step {state['step']} of steps={config.steps} is reached")  # fmt: skip
            more = "time_budget_s" if over_budget else "steps"
            log(f"{run_dir} is already complete: {reached}; nothing was run or rewritten. To train further, raise "
                f"{more} (`sspo resume {run_dir} {more}=...`); to evaluate again, `sspo eval --model {run_dir}`")  # fmt: skip
            return summary
    for key, a, b in changes:
        log(f"warning: resuming with a change (--allow-changes): {key} {_show(a)} -> {_show(b)}")
    return Trainer(config, resume=True, log=log, checkpoint=checkpoint).run()
