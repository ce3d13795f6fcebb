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
from ..objectives import policy_loss
from ..tasks import DatasetUnavailableError, load_task
from .checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, to_dict, validate
from .evaluate import evaluate
from .metrics_log import MetricsLogger, Progress, truncate_metrics
from .plots import plot_run
from .policy import response_logprobs
from .rewards import task_reward
from .rollout import logprob_mismatch, make_rollout
from .warm_start import prepare_model

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "final_metrics.json"


class TrainingError(RuntimeError):
    """The run stopped for a reason the user must fix (non-finite updates, a failing verifier)."""


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

    def __init__(self, config: TrainConfig, *, resume: bool = False, log=print):
        validate(config)
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
        self.recompute_old = self.sampler_dtype is None and (
            mode == "recompute" or (mode == "auto" and self.dtype != torch.float32))
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
        self.step = 0
        self.updates = 0
        self.elapsed = 0.0
        self.nonfinite_in_a_row = 0
        self._warned: set[str] = set()
        self.accuracy_before: float | None = None
        if resume and existing:
            state, snapshots = load_checkpoint(existing[-1], model=self.model, optimizer=self.optimizer,
                                               scheduler=self.scheduler)  # fmt: skip
            self.step, self.updates, self.elapsed = state["step"], state["updates"], state["elapsed"]
            self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
            self.accuracy_before = state.get("accuracy_before")
            self.history.extend(snapshots)
            moved = truncate_metrics(self.run_dir, self.step, state.get("metric_rows"))
            log(f"resumed {self.run_dir} at step {self.step} ({moved} later metric rows will be re-run)")
        elif self.behaviour is not None:
            self.history.append(self._snapshot())
        self.logger = MetricsLogger(self.run_dir, purge_step=self.step + 1 if self.step else None)

    # ------------------------------------------------------------------ helpers
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
        p = self.config.rollout.prompts_per_step
        pool = len(self.train_problems)
        perms: dict[int, torch.Tensor] = {}  # one shuffle per pass over the pool
        out = []
        for pos in range((step - 1) * p, step * p):
            epoch, offset = divmod(pos, pool)
            if epoch not in perms:
                perms[epoch] = torch.randperm(pool, generator=seeded(self.config.seed, 1, epoch))
            out.append(self.train_problems[int(perms[epoch][offset])])
        return out

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
        batch = make_rollout(
            self._sampler(), self.tokenizer, self._problems_for(step), self.scorer,
            samples_per_prompt=c.rollout.samples_per_prompt, max_new_tokens=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature, top_p=c.rollout.top_p, template=c.task.template,
            advantage=c.objective.advantage, generator=seeded(c.seed, 2, step, device=self.device),
            backend=c.rollout.backend, reference=self.reference, recompute=self.recompute_old,
            truncated=c.rollout.truncated,
        )  # fmt: skip
        self._check_rewards(step, batch.metrics)
        t_rollout = time.perf_counter() - t0
        stats = _StepStats()
        first_dev = None
        counts = {"applied": 0, "skipped_zero_signal": 0, "skipped_nonfinite": 0}
        for epoch in range(c.update.epochs):
            for idx in self.mini_batches(step, epoch, batch.input_ids.shape[0]):
                # without a recompute, the policy is its own behaviour policy until its first applied update
                own = (counts["applied"] == 0 and not self.recompute_old and self.behaviour is None
                       and self.sampler_dtype is None)
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
        if not self._has_signal(batch.advantages[idx], mask):
            return None, "skipped_zero_signal"
        norms = {"global_num_tokens": mask.sum(), "global_num_seqs": mask.any(-1).sum()}
        micro = c.update.micro_batch_size or len(idx)
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
            out = policy_loss(
                o.name, logp, mb["old_log_probs"], mb["advantages"], mb["response_mask"],
                loss_agg_mode=o.loss_agg_mode, kl_coef=o.kl_coef, ref_log_probs=mb["ref_log_probs"],
                kl_estimator=o.kl_estimator, entropy=entropy, entropy_coef=o.entropy_coef, **norms, **o.params,
            )  # fmt: skip
            out.loss.backward()
            drift.append((logp.detach().float() - mb["old_log_probs"].float())[mb["response_mask"]].abs())
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
        for key in ("ratio/max", "seq_weight/max", "rollout/logprob_mismatch_max"):
            if key in collected.values:
                metrics[key] = torch.stack(collected.values[key]).max()
        for key in ("ratio/min", "seq_weight/min"):
            metrics[key] = torch.stack(collected.values[key]).min()
        metrics["grad_norm"] = grad_norm.detach()
        drift = torch.cat(drift)
        if drift.numel():  # |Δ| quantiles over the update's valid tokens (the log-ratio the objective sees, unclamped)
            metrics["drift/abs_log_ratio_p50"], metrics["drift/abs_log_ratio_p99"] = torch.quantile(
                drift, torch.tensor([0.5, 0.99], dtype=drift.dtype, device=drift.device))
        return metrics, "applied" if applied else "skipped_nonfinite"

    # ------------------------------------------------------------------ the run
    def _require_finite_weights(self, what: str) -> None:
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingError(f"{what}: refused, {len(bad)} weight tensor(s) hold non-finite values "
                                f"(first: {bad[0]}); the last checkpoint is intact, resume from it with a lower optim.lr")  # fmt: skip

    def _checkpoint(self) -> None:
        self._require_finite_weights(f"checkpoint of step {self.step}")
        save_checkpoint(
            self.run_dir, step=self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            snapshots=list(self.history) if self.behaviour is not None else [], keep=self.config.keep_checkpoints,
            trainer_state={"updates": self.updates, "elapsed": self.elapsed, "accuracy_before": self.accuracy_before,
                           "metric_rows": self.logger.rows, "nonfinite_in_a_row": self.nonfinite_in_a_row},
        )  # fmt: skip

    def run(self) -> dict:
        """Train to ``steps`` (or the time budget) and return the final metrics."""
        c = self.config
        wall0 = time.perf_counter()
        if self.step == 0:
            before = self._evaluate()
            self.accuracy_before = before["eval/accuracy"]
            self.logger.log(0, before)
            self.log(f"held-out greedy accuracy before training: {self.accuracy_before:.3f}")
        # with a time budget the bar tracks training seconds (the step count is then only an upper bound)
        by_time = c.time_budget_s is not None
        progress = Progress(c.time_budget_s if by_time else c.steps, enabled=c.progress,
                            description=f"{c.objective.name} ({'seconds' if by_time else 'steps'})",
                            completed=self.elapsed if by_time else self.step)  # fmt: skip
        stopped = "steps"
        try:
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
                progress.update(trained if by_time else 1, step=self.step,
                                reward=metrics.get("reward/mean"), acc=metrics.get("eval/accuracy"))  # fmt: skip
                over_budget = c.time_budget_s is not None and self.elapsed >= c.time_budget_s
                if self.step % c.checkpoint_every == 0 or self.step == c.steps or over_budget:
                    self._checkpoint()
                if over_budget:
                    stopped = "time_budget"
                    break
        finally:
            progress.close()
        final = self._evaluate()
        self.logger.log(self.step, final)
        self.logger.close()
        export = self.run_dir / "final_model"
        self._require_finite_weights("final_model export")
        self.model.save_pretrained(export)
        self.tokenizer.save_pretrained(export)
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


def resume(run_dir: str | Path, *, log=print, overrides: list[str] | None = None) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint with its saved config."""
    from .config import load_config

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {run_dir!s} has no {CONFIG_FILE}, so it is not a run directory; "
                                "pass the out_dir of an earlier `sspo train`")
    config = load_config(path, [f"out_dir={run_dir}", *(overrides or [])])
    return Trainer(config, resume=True, log=log).run()
