"""TRL plug-in: a ``GRPOTrainer`` whose loss is any objective of :data:`sspo.OBJECTIVES`.

TRL keeps everything but the loss: generation (transformers or vLLM), reward functions, group
advantages, the reference model, logging and gradient accumulation. :class:`SSPOGRPOTrainer`
replaces only ``GRPOTrainer._compute_loss`` with one call to :func:`sspo.policy_loss`.

Normalisation follows TRL: ``token-mean`` uses TRL's DAPO normaliser (active tokens of the whole
accumulation window, across processes); the ``seq-mean-*`` modes average over the micro-batch's
sequences and divide by the number of accumulation steps, as TRL's ``grpo`` loss does.
vLLM's importance-sampling correction (``importance_sampling_ratio``) goes to :func:`sspo.policy_loss`
as ``rollout_is_weights`` (``[B, T]`` in TRL's token modes, ``[B]`` in its sequence modes), and TRL's
off-policy sequence mask (``off_policy_mask_threshold``) sets the advantage of each sequence it drops
to 0. Supported TRL: :data:`SUPPORTED_TRL` (the override mirrors TRL's private ``_compute_loss``
inputs, which change between minor versions).

:class:`CodeRewardFunc` is a ``GRPOTrainer`` reward function for coding data: it runs each completion's
program against its row's tests in sspo's sandbox (:class:`sspo.rewards.CodeScorer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import sspo

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("sspo.integrations.trl needs TRL: `pip install 'sspo[trl]'`") from err

SUPPORTED_TRL = ">=1.16,<1.17"
"""The TRL versions this module is tested with (the ``trl`` extra pins the same range)."""

METRIC_PREFIX = "sspo/"
"""Every :func:`sspo.policy_loss` metric is logged by TRL as ``sspo/<name>``."""


CLIP_OBJECTIVES = ("grpo", "gspo", "gspo_token", "luspo")
"""Objectives whose ``eps_low``/``eps_high`` are TRL's ``epsilon``/``epsilon_high``."""
DPPO_OBJECTIVES = ("dppo_tv", "dppo_kl")
TOKEN_IS_MODES = ("token_truncate", "token_mask")
"""TRL's ``vllm_importance_sampling_mode``s with a weight per token; the others weigh whole sequences."""


@dataclass
class SSPOGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the choice of sspo objective. TRL's own knobs keep their meaning:
    ``epsilon``/``epsilon_high`` are ``eps_low``/``eps_high`` (grpo, gspo, gspo_token, luspo; set 3e-4/4e-4
    for GSPO and LUSPO), ``sapo_temperature_pos/neg`` are ``tau_pos``/``tau_neg`` (sapo, sspo),
    ``vespo_k_pos``/``vespo_lambda_pos``/``vespo_k_neg``/``vespo_lambda_neg`` are VESPO's shape, ``beta``
    is the k3 KL coefficient and ``entropy_coef`` the entropy bonus. ``loss_type`` and
    ``importance_sampling_level`` are replaced by ``sspo_objective``."""

    sspo_objective: str = field(default="sspo", metadata={"help": f"One of {', '.join(sspo.OBJECTIVES)}."})
    sspo_loss_agg_mode: str | None = field(
        default=None,
        metadata={"help": "token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm; "
                  "None: the objective's default (sspo.get_objective(name).default_agg_mode)."},
    )  # fmt: skip
    sspo_gate: str = field(default="arctan", metadata={"help": "SSPO gate: a name in sspo.GATES."})
    sspo_gmpo_clip_low: float = field(default=0.4, metadata={"help": "GMPO log-space clip c_low."})
    sspo_gmpo_clip_high: float = field(default=0.4, metadata={"help": "GMPO log-space clip c_high."})
    sspo_cispo_ratio_max: float = field(default=5.0, metadata={"help": "CISPO cap r_max of the IS weight."})
    sspo_dppo_clip_ratio: float | None = field(
        default=None, metadata={"help": "DPPO divergence threshold δ (None: the objective's default)."}
    )
    sspo_dppo_clip_ratio_low: float | None = field(
        default=None, metadata={"help": "DPPO threshold δ_low for A ≤ 0 (None: sspo_dppo_clip_ratio)."}
    )
    sspo_dppo_clip_ratio_high: float | None = field(
        default=None, metadata={"help": "DPPO threshold δ_high for A > 0 (None: sspo_dppo_clip_ratio)."}
    )
    sspo_dppo_clip_ratio_c: float | None = field(
        default=None, metadata={"help": "DPPO truncation c of the ratio (None: the objective's default)."}
    )
    sspo_m2po_threshold: float | None = field(
        default=None, metadata={"help": "M2PO second-moment bound τ_M2 (None: the objective's default)."}
    )

    def __post_init__(self):
        super().__post_init__()
        sspo.get_objective(self.sspo_objective)
        if self.sspo_loss_agg_mode is not None and self.sspo_loss_agg_mode not in sspo.AGG_MODES:
            raise ValueError(f"sspo_loss_agg_mode={self.sspo_loss_agg_mode!r} is not one of {sspo.AGG_MODES}")
        if self.sspo_gate not in sspo.GATES:
            raise ValueError(f"sspo_gate={self.sspo_gate!r} is not one of {', '.join(sspo.GATES)}")
        for name, bad, fix in _UNSUPPORTED:
            if bad(self):
                raise ValueError(f"SSPOGRPOConfig: {name} is not supported by the sspo loss; {fix}")
        # the objective's hyperparameters and aggregation mode, checked now rather than at the first step
        one = torch.zeros(1, 1)
        sspo.policy_loss(self.sspo_objective, one, one, torch.ones(1), torch.ones(1, 1, dtype=torch.bool),
                         loss_agg_mode=self.sspo_loss_agg_mode, **self.objective_hyperparameters())  # fmt: skip

    def objective_hyperparameters(self) -> dict:
        """The ``**hyperparameters`` of :func:`sspo.policy_loss` for ``sspo_objective``."""
        name = self.sspo_objective
        if name in CLIP_OBJECTIVES:
            high = self.epsilon_high if self.epsilon_high is not None else self.epsilon
            return {"eps_low": self.epsilon, "eps_high": high}
        if name in ("sapo", "sspo"):
            taus = {"tau_pos": self.sapo_temperature_pos, "tau_neg": self.sapo_temperature_neg}
            return {**taus, "gate": self.sspo_gate} if name == "sspo" else taus
        if name == "gmpo":
            return {"clip_low": self.sspo_gmpo_clip_low, "clip_high": self.sspo_gmpo_clip_high}
        if name == "cispo":
            return {"ratio_max": self.sspo_cispo_ratio_max}
        if name == "vespo":
            return {"k_pos": self.vespo_k_pos, "lambda_pos": self.vespo_lambda_pos,
                    "k_neg": self.vespo_k_neg, "lambda_neg": self.vespo_lambda_neg}  # fmt: skip
        if name in DPPO_OBJECTIVES:
            given = {"clip_ratio": self.sspo_dppo_clip_ratio, "clip_ratio_low": self.sspo_dppo_clip_ratio_low,
                     "clip_ratio_high": self.sspo_dppo_clip_ratio_high, "clip_ratio_c": self.sspo_dppo_clip_ratio_c}  # fmt: skip
            return {k: v for k, v in given.items() if v is not None}
        if name == "m2po" and self.sspo_m2po_threshold is not None:
            return {"m2_threshold": self.sspo_m2po_threshold}
        return {}


_UNSUPPORTED = (
    ("loss_type", lambda a: a.loss_type != "dapo", "leave it at its default and choose sspo_objective"),
    ("importance_sampling_level", lambda a: a.importance_sampling_level != "token",
     "the objective decides (sspo_objective='gspo' is the sequence-level ratio)"),
    ("delta", lambda a: a.delta is not None, "set delta=None"),
    ("top_entropy_quantile", lambda a: a.top_entropy_quantile < 1.0, "set top_entropy_quantile=1.0"),
    ("use_adaptive_entropy", lambda a: a.use_adaptive_entropy, "use a fixed entropy_coef"),
    ("use_bias_correction_kl", lambda a: a.beta != 0.0 and a.use_bias_correction_kl,
     "the sspo KL term is plain k3: set use_bias_correction_kl=False"),
)  # fmt: skip


_PARTIAL_METRICS = ("pg_loss", "entropy", "kl")
"""Metrics aggregated like the loss (partial sums under a window-wide token normaliser)."""


class SSPOGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` computing its loss with :func:`sspo.policy_loss` (objective from :class:`SSPOGRPOConfig`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SSPOGRPOConfig):
            raise TypeError(f"SSPOGRPOTrainer needs args=SSPOGRPOConfig(...), got {type(self.args).__name__}")

    def sspo_loss_inputs(self, model, inputs: dict) -> dict:
        """The tensors the loss reads: ``log_probs``, ``old_log_probs``, ``advantages`` (0 for the sequences
        TRL's off-policy mask drops), ``mask``, ``rollout_is_weights`` (vLLM's correction), ``entropy``,
        ``ref_log_probs`` and the MoE ``aux_loss``, exactly as TRL's ``_compute_loss`` builds them."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        optional = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                    "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")  # fmt: skip
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **{k: inputs.get(k) for k in optional},
        )  # fmt: skip
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        advantages = inputs["advantages"]
        if self.args.off_policy_mask_threshold is not None:
            # TRL's mask multiplies the sequence's loss terms by 0 (it stays in the normalisers); every sspo
            # objective's term vanishes at A = 0, so the same is a zero advantage
            keep = GRPOTrainer.get_off_policy_mask(
                advantages=advantages[:, None] if advantages.dim() == 1 else advantages, per_token_logps=logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old), mask=mask,
                off_policy_threshold=self.args.off_policy_mask_threshold,
            )  # fmt: skip
            advantages = advantages * (keep[:, 0] if advantages.dim() == 1 else keep).to(advantages.dtype)
        weights = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            weights = inputs["importance_sampling_ratio"]  # [B, T] (token modes) or [B, 1] (sequence modes)
            if self.args.vllm_importance_sampling_mode not in TOKEN_IS_MODES:
                weights = weights.reshape(-1)
        return {
            "log_probs": logps,
            "old_log_probs": old,
            "advantages": advantages,
            "mask": mask,
            "rollout_is_weights": weights,
            "entropy": entropies,
            "ref_log_probs": inputs.get("ref_per_token_logps"),
            "aux_loss": aux_loss,
        }

    def sspo_normalisers(self, inputs: dict, mode: str) -> tuple[dict, float, float]:
        """``(policy_loss normaliser kwargs, loss divisor, metric scale)`` following TRL.

        ``token-mean`` normalises by the tokens of the whole accumulation window, so each micro-batch's
        ``pg_loss``/``entropy``/``kl`` is a partial sum: the metric scale (the number of accumulation
        steps) makes TRL's mean over micro-batches the window's value.
        """
        train = mode == "train"
        accum = float(self.current_gradient_accumulation_steps if train else 1)
        agg = self.args.sspo_loss_agg_mode or sspo.get_objective(self.args.sspo_objective).default_agg_mode
        kwargs = {"loss_agg_mode": agg, "max_response_length": self.max_completion_length}
        if agg == "token-mean":  # TRL's DAPO normaliser: tokens of one accumulation window per process
            tokens = inputs["num_items_in_batch"] / self.accelerator.num_processes
            if train:
                tokens = tokens * accum / self.args.steps_per_generation
            return {**kwargs, "global_num_tokens": tokens}, 1.0, accum
        return kwargs, accum, 1.0

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        x = self.sspo_loss_inputs(model, inputs)
        norm, divisor, metric_scale = self.sspo_normalisers(inputs, mode)
        out = sspo.policy_loss(
            self.args.sspo_objective, x["log_probs"], x["old_log_probs"], x["advantages"], x["mask"],
            kl_coef=self.beta, ref_log_probs=x["ref_log_probs"], kl_estimator="k3",
            entropy=x["entropy"], entropy_coef=self.entropy_coef, rollout_is_weights=x["rollout_is_weights"],
            **norm, **self.args.objective_hyperparameters(),
        )  # fmt: skip
        loss = out.loss / divisor
        if self.aux_loss_enabled:
            accum = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * x["aux_loss"] / accum
        metrics = {k: v * metric_scale if k in _PARTIAL_METRICS else v for k, v in out.metrics.items()}
        self.log_sspo_metrics(metrics, mode)
        return loss

    def log_sspo_metrics(self, metrics: dict[str, torch.Tensor], mode: str) -> None:
        """Append every metric to TRL's ``_metrics[mode]`` as ``sspo/<name>`` (mean over processes), and
        ``entropy``/``kl`` under TRL's own names. One gather and one host sync for all of them."""
        keys = list(metrics)
        local = torch.stack([metrics[k].detach().float() for k in keys])
        values = self.accelerator.gather(local).view(-1, len(keys)).nanmean(0).tolist()
        for key, value in zip(keys, values, strict=True):
            self._metrics[mode][METRIC_PREFIX + key].append(value)
            if key in ("entropy", "kl"):
                self._metrics[mode][key].append(value)


class CodeRewardFunc:
    """A ``GRPOTrainer`` reward function (``reward_funcs=CodeRewardFunc()``): 1.0 when the completion's
    program passes every test of its row, else 0.0 (``partial=True``: the fraction of assertions that held).

    The dataset needs the columns ``tests`` (the source of ``check(candidate)``) and ``entry_point``
    (``add``, ``Solution().twoSum``), and may have ``prefix`` (trusted text put before the program:
    imports, helper classes), as :func:`sspo.tasks.load_task` gives them for ``humaneval``/``leetcode``.
    The program is the completion's last fenced Python block (or all of it), run in sspo's sandbox, and
    only ``check`` returning in the trusted judge counts (docs/code_tasks.md). A sandbox failure (the
    scorer's fault, not the model's) scores 0.0 and is logged as ``code/sandbox_error_frac``. The
    scorer's judges start on the first call and stop with :meth:`close` or at exit.
    """

    __name__ = "code_reward"
    """TRL logs the reward under this name (``rewards/code_reward/mean``)."""

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        partial: bool = False,
        workers: int | None = None,
    ):
        from sspo.rewards.code.scorer import _check_options

        _check_options(timeout, memory_mb, partial)
        self.timeout, self.memory_mb, self.partial, self.workers = timeout, memory_mb, partial, workers
        self._scorer = None

    @property
    def scorer(self):
        if self._scorer is None:
            from sspo.rewards import CodeScorer

            self._scorer = CodeScorer(
                self.workers, timeout=self.timeout, memory_mb=self.memory_mb, partial=self.partial
            )
        return self._scorer

    def __call__(
        self, completions, tests, entry_point, prefix=None, log_metric=None, **kwargs
    ) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        prefixes = prefix if prefix is not None else [""] * len(texts)
        problems = [
            {"tests": t, "entry_point": e, "prefix": p or ""}
            for t, e, p in zip(tests, entry_point, prefixes, strict=True)
        ]
        grades = self.scorer.grade_batch(texts, problems)
        if log_metric is not None and grades:
            log_metric(
                "code/sandbox_error_frac", sum(g.status == "sandbox_error" for g in grades) / len(grades)
            )
        return [g.score for g in grades]

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def __getstate__(self) -> dict:  # picklable: the judges are not, and start again on first use
        return {**self.__dict__, "_scorer": None}


__all__ = ["METRIC_PREFIX", "SUPPORTED_TRL", "CodeRewardFunc", "SSPOGRPOConfig", "SSPOGRPOTrainer", "trl"]
