"""verl plug-in: every objective of :data:`sspo.OBJECTIVES` as a verl policy loss.

Importing this module registers, in verl's ``POLICY_LOSS_REGISTRY``:

============================  ===========================================
verl ``policy_loss.loss_mode``  sspo objective
============================  ===========================================
``sspo``                      ``sspo`` with the ``arctan`` gate (default)
``sspo_<gate>``               ``sspo`` with every other gate of :data:`sspo.GATES` (``sspo_sigmoid``, ...)
``sspo_<name>``               every other objective (``sspo_grpo``, ``sspo_gspo``, ``sspo_gspo_token``,
                              ``sspo_gmpo``, ``sspo_sapo``, ``sspo_cispo``, ``sspo_vespo``, ``sspo_luspo``,
                              ``sspo_dppo_tv``, ``sspo_dppo_kl``, ``sspo_m2po``, ...)
============================  ===========================================

verl imports the module in every worker when ``VERL_USE_EXTERNAL_MODULES=sspo.integrations.verl``
is set in the environment (``import verl`` reads it). Hyperparameters come from verl's actor
config (see :func:`hyperparameters_from_config`) or are fixed at registration (:func:`register`);
the micro-batch loss is normalised with verl's global batch counts (``config.global_batch_info``)
exactly like verl's ``agg_loss``, so the micro-batch losses of one mini-batch sum (after verl's DP
averaging) to the loss of the whole mini-batch (docs/objectives.md). verl's rollout-correction weights
``rollout_is_weights`` go to :func:`sspo.policy_loss` as ``rollout_is_weights`` (:func:`rollout_weights`).

Importing it also lets verl's FSDP engine build models beside TRL 1.x
(:func:`neutralise_trl_value_head_patch`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

import sspo

try:
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sspo.integrations.verl needs verl: `pip install 'sspo[verl]'` then `pip install --no-deps verl==0.9.1` "
        "(see docs/integrations.md)"
    ) from err

CLIP_OBJECTIVES = ("grpo", "gspo", "gspo_token", "luspo")
"""Objectives whose ``eps_low``/``eps_high`` are verl's ``clip_ratio_low``/``clip_ratio_high``."""
DPPO_OBJECTIVES = ("dppo_tv", "dppo_kl")
"""Objectives whose thresholds carry verl's names and are read as verl's own ``dppo_tv``/``dppo_kl`` read them."""
ROLLOUT_IS_LEVELS = ("token", "sequence")
"""verl's ``algorithm.rollout_correction.rollout_is`` levels."""
DPPO_CLIP_RATIO_C_FALLBACK = 20.0
"""verl's ``dppo_*`` truncation when the config has no ``clip_ratio_c`` (``config.get("clip_ratio_c", 20.0)``);
verl's ``ActorConfig`` always has one (default 3.0), and then that is used, as verl does."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` for verl's dataclass configs and for DictConfig/dict alike; ``default`` if unset."""
    if config is None:
        return default
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def verl_names() -> dict[str, tuple[str, dict[str, Any]]]:
    """``{verl loss_mode: (sspo objective, fixed hyperparameters)}`` for every objective and built-in gate."""
    names: dict[str, tuple[str, dict[str, Any]]] = {}
    for objective in sspo.OBJECTIVES:
        if objective == "sspo":
            names["sspo"] = ("sspo", {"gate": "arctan"})
            for gate in sspo.GATES:
                if gate != "arctan":
                    names[f"sspo_{gate}"] = ("sspo", {"gate": gate})
        else:
            names[f"sspo_{objective}"] = (objective, {})
    expected = len(sspo.OBJECTIVES) + len(sspo.GATES) - 1
    if len(names) != expected:  # a gate named like an objective would shadow it
        raise RuntimeError(f"verl loss names collide: {sorted(names)}")
    return names


def hyperparameters_from_config(objective: str, config: Any) -> dict[str, Any]:
    """The objective's hyperparameters read from a verl ``ActorConfig``.

    - ``grpo``, ``gspo``, ``gspo_token``, ``luspo``: ``eps_low = clip_ratio_low``, ``eps_high = clip_ratio_high``
      (each falls back to ``clip_ratio``), as verl's ``vanilla``/``gspo``;
    - ``gmpo``: ``clip_low = clip_ratio_low``, ``clip_high = clip_ratio_high`` (log-space clip, as verl's
      ``geo_mean``);
    - ``sapo``, ``sspo``: ``tau_pos``, ``tau_neg`` (the actor fields verl's ``sapo`` reads);
    - ``cispo``: ``ratio_max = 1 + clip_ratio_high`` (verl's ``cispo`` caps the ratio at ``1 + clip_ratio_high``);
    - ``dppo_tv``, ``dppo_kl``: ``clip_ratio``, ``clip_ratio_low``, ``clip_ratio_high`` (None: ``clip_ratio``)
      and ``clip_ratio_c = config.get("clip_ratio_c", 20.0)``, exactly as verl's ``dppo_tv``/``dppo_kl``
      (with verl's ``ActorConfig`` that is its ``clip_ratio_c``, default 3.0);
    - every other objective (``vespo``, ``m2po``, ...): nothing; its defaults, or the hyperparameters fixed
      by :func:`register`.
    """
    clip = _get(config, "clip_ratio", 0.2)
    if objective in DPPO_OBJECTIVES:
        return {
            "clip_ratio": float(clip),
            "clip_ratio_low": _optional_float(_get(config, "clip_ratio_low")),
            "clip_ratio_high": _optional_float(_get(config, "clip_ratio_high")),
            "clip_ratio_c": float(_get(config, "clip_ratio_c", DPPO_CLIP_RATIO_C_FALLBACK)),
        }
    low, high = _get(config, "clip_ratio_low", clip), _get(config, "clip_ratio_high", clip)
    if objective in CLIP_OBJECTIVES:
        return {"eps_low": float(low), "eps_high": float(high)}
    if objective == "gmpo":
        return {"clip_low": float(low), "clip_high": float(high)}
    if objective in ("sapo", "sspo"):
        return {
            "tau_pos": float(_get(config, "tau_pos", 1.0)),
            "tau_neg": float(_get(config, "tau_neg", 1.05)),
        }
    if objective == "cispo":
        return {"ratio_max": 1.0 + float(high)}
    return {}


def rollout_is_level(weights: torch.Tensor, mask: torch.Tensor) -> str:
    """The level of verl's ``[B, T]`` ``rollout_is_weights``: ``"sequence"`` when every valid row's weight
    is the same on all of its valid tokens (verl broadcasts a sequence weight over the row), else
    ``"token"``. One host sync.

    The actor does not know ``algorithm.rollout_correction.rollout_is`` (verl hands its actor only
    ``actor_rollout_ref``; ``policy_loss.rollout_correction`` is filled in bypass mode only), hence the
    inference. Token weights are read as sequence weights only if every row of the micro-batch is
    constant, e.g. one-token rows (where both readings agree) or rows truncated at the threshold on
    every token; :func:`register` with ``rollout_is_level=`` removes the guess.
    """
    mask = mask.bool()
    big = torch.full((), float("inf"), dtype=weights.dtype, device=weights.device)
    lo = torch.where(mask, weights, big).amin(-1)
    hi = torch.where(mask, weights, -big).amax(-1)
    constant = (hi == lo) | ~mask.any(-1)
    return "sequence" if bool(constant.all()) else "token"


def rollout_weights(objective: str, weights: torch.Tensor | None, mask: torch.Tensor,
                    level: str | None = None) -> torch.Tensor | None:  # fmt: skip
    """verl's ``rollout_is_weights`` as :func:`sspo.policy_loss` takes them (``[B, T]`` token weights,
    ``[B]`` sequence weights).

    Only an objective that folds the weight into its own sequence weight (``own_rollout_weight``:
    ``vespo``) reads the level: it adds ``Σ_t log ρ_t`` for token weights and ``log ρ_i`` once for a
    sequence weight, which verl hands broadcast to ``[B, T]``. ``level``: ``"token"``, ``"sequence"``
    or None (inferred by :func:`rollout_is_level`). Every other objective multiplies its token terms by
    the ``[B, T]`` weights (a sequence-level objective by their mean over the row), whatever the level.
    """
    if weights is None:
        return None
    if level is not None and level not in ROLLOUT_IS_LEVELS:
        raise ValueError(
            f"rollout_is_level={level!r} is not one of None, {', '.join(map(repr, ROLLOUT_IS_LEVELS))}"
        )
    weights = weights.detach()
    if (
        weights.dim() != 2
        or weights.shape != mask.shape
        or not sspo.get_objective(objective).own_rollout_weight
    ):
        return weights  # policy_loss checks the shape
    mask = mask.bool()
    if level == "token":
        return weights
    inferred = rollout_is_level(weights, mask)
    if level == "sequence" and inferred == "token":
        raise ValueError("rollout_is_level='sequence' but rollout_is_weights vary inside a sequence "
                         "(algorithm.rollout_correction.rollout_is=token?)")  # fmt: skip
    if inferred == "token":
        return weights
    row = torch.where(mask, weights, torch.zeros((), dtype=weights.dtype, device=weights.device)).amax(-1)
    return torch.where(mask.any(-1), row, torch.zeros_like(row))


def normalisers(config: Any, loss_agg_mode: str) -> tuple[dict[str, Any], float, str]:
    """Translate verl's ``global_batch_info`` into ``policy_loss`` normaliser arguments.

    Returns ``(kwargs, dp_size, mode)``. verl's ``token-sum`` is ``token-mean`` with a normaliser of 1.
    As in verl's ``agg_loss``, a run with ``dp_size > 1`` must provide the global counts.
    """
    info = dict(_get(config, "global_batch_info", {}) or {})
    dp_size = float(info.get("dp_size") or 1)
    num_tokens, num_seqs = info.get("batch_num_tokens"), info.get("global_batch_size")
    kwargs: dict[str, Any] = {"max_response_length": info.get("loss_scale_factor")}
    mode = loss_agg_mode
    if mode == "token-sum":
        mode, num_tokens = "token-mean", 1
    if dp_size > 1 and (
        (mode == "token-mean" and num_tokens is None) or (mode != "token-mean" and num_seqs is None)
    ):
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r} with dp_size > 1 needs verl's global batch info")
    kwargs.update(global_num_tokens=num_tokens, global_num_seqs=num_seqs)
    return kwargs, dp_size, mode


VERL_OWN_METRICS = ("pg_loss",)
"""sspo metrics verl logs itself: ``actor/pg_loss`` is the returned loss, summed over micro-batches. verl
averages every metric a loss function returns over the micro-batches, which would turn a micro-batch's
share of the mini-batch loss into the loss divided by their number."""


def verl_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """verl-style metrics: ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``, then
    every other sspo metric but :data:`VERL_OWN_METRICS` under ``actor/sspo/``. One host sync for the
    whole dict."""
    keys = [k for k in metrics if k not in VERL_OWN_METRICS]
    values = torch.stack([metrics[k].detach().to(torch.float64) for k in keys]).cpu().tolist()
    flat = dict(zip(keys, values, strict=True))
    out = {
        "actor/pg_clipfrac": flat.get("pg_clipfrac", 0.0),
        "actor/ppo_kl": flat["ppo_kl"],
        "actor/pg_clipfrac_lower": flat.get("pg_clipfrac_low", 0.0),
    }
    out.update({f"actor/sspo/{k}": v for k, v in flat.items()})
    return out


def _agg_hint(objective: str) -> str:
    modes = " or ".join(sspo.get_objective(objective).agg_modes)
    return f"in verl, set actor_rollout_ref.actor.loss_agg_mode={modes} (verl's default is token-mean)"


def make_policy_loss(objective: str, fixed: dict[str, Any] | None = None, *,
                     rollout_is_level: str | None = None) -> Callable:  # fmt: skip
    """A function with verl's policy-loss signature computing :func:`sspo.policy_loss` ``objective``.

    ``fixed``: hyperparameters that override those read from the actor config. ``rollout_is_level``: the
    level of verl's ``rollout_is_weights`` (None: inferred, see :func:`rollout_weights`)."""
    spec = sspo.get_objective(objective)  # fail early on a bad name
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(spec.defaults)
    if unknown:
        raise ValueError(f"objective {objective!r} has no hyperparameter {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(spec.defaults) or '(none)'}")  # fmt: skip
    if rollout_is_level is not None and rollout_is_level not in ROLLOUT_IS_LEVELS:
        raise ValueError(f"rollout_is_level={rollout_is_level!r} is not one of None, "
                         f"{', '.join(map(repr, ROLLOUT_IS_LEVELS))}")  # fmt: skip

    def policy_loss_fn(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "seq-mean-token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        hp = {**hyperparameters_from_config(objective, config), **fixed}
        norm, dp_size, mode = normalisers(config, loss_agg_mode)
        weights = rollout_weights(objective, rollout_is_weights, response_mask, rollout_is_level)
        try:
            out = sspo.policy_loss(objective, log_prob, old_log_prob, advantages, response_mask,
                                   loss_agg_mode=mode, rollout_is_weights=weights, **norm, **hp)  # fmt: skip
        except ValueError as err:
            if mode not in spec.agg_modes:
                raise ValueError(f"{err}; {_agg_hint(objective)}") from err
            raise
        return out.loss * dp_size, verl_metrics(out.metrics)

    policy_loss_fn.__name__ = f"sspo_policy_loss_{objective}"
    policy_loss_fn.__qualname__ = policy_loss_fn.__name__
    policy_loss_fn.__doc__ = (
        f"verl policy loss computing ``sspo.policy_loss({objective!r}, ...)`` with {fixed or 'defaults'}."
    )
    return policy_loss_fn


def register(name: str, objective: str, *, rollout_is_level: str | None = None, overwrite: bool = False,
             **hyperparameters) -> Callable:  # fmt: skip
    """Register ``objective`` with fixed ``hyperparameters`` as verl loss ``name``; returns the function.

    For hyperparameters verl's ``ActorConfig`` has no field for (``vespo``'s ``k_pos``, ``lambda_pos``,
    ``k_neg``, ``lambda_neg``; ``m2po``'s ``m2_threshold``), from a module of your own listed in
    ``VERL_USE_EXTERNAL_MODULES``::

        import sspo.integrations.verl as sv
        sv.register("sspo_vespo_k1", "vespo", k_pos=1.0, lambda_pos=2.0)

    ``rollout_is_level`` declares verl's ``algorithm.rollout_correction.rollout_is`` (None: inferred from
    the weights). Fixed hyperparameters override those read from the actor config. A name verl owns is
    refused; one of this plug-in's is replaced only with ``overwrite=True``.
    """
    existing = POLICY_LOSS_REGISTRY.get(name)
    if existing is not None:
        ours = getattr(existing, "__name__", "").startswith("sspo_policy_loss_")
        if not ours:
            raise ValueError(f"verl already has a policy loss named {name!r}; refusing to replace it")
        if not overwrite:
            raise ValueError(f"{name!r} is registered already; pass overwrite=True to replace it")
    fn = make_policy_loss(objective, hyperparameters, rollout_is_level=rollout_is_level)
    return register_policy_loss(name)(fn)


def register_all() -> dict[str, Callable]:
    """Register every name of :func:`verl_names` with verl; refuse to shadow one of verl's own losses
    (this plug-in's own names are replaced, so that importing the module twice is harmless)."""
    return {
        name: register(name, objective, overwrite=True, **fixed)
        for name, (objective, fixed) in verl_names().items()
    }


@functools.cache
def trl_has_value_head() -> bool:
    """Whether the installed TRL has ``AutoModelForCausalLMWithValueHead`` (TRL < 1.0 does, 1.x does not),
    looked up where verl looks for it."""
    with warnings.catch_warnings():  # TRL warns on any import from trl.experimental
        warnings.simplefilter("ignore")
        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead  # noqa: F401
        except ImportError:
            try:
                from trl import AutoModelForCausalLMWithValueHead  # noqa: F401
            except ImportError:
                return False
    return True


def neutralise_trl_value_head_patch() -> bool:
    """Let verl 0.9.1's FSDP engine build models when TRL 1.x is installed beside it.

    ``verl/models/transformers/monkey_patch.py`` (``apply_monkey_patch``, lines 352-356 in verl 0.9.1),
    which the FSDP engine runs on every model it builds, does ``if is_trl_available(): from trl import
    AutoModelForCausalLMWithValueHead`` to give that class ``nn.Module.state_dict``. TRL 1.x (this
    package's ``trl`` extra) has no such class, so the import raises and no actor starts. This rebinds
    that module's ``is_trl_available`` (and nothing else: ``verl.utils.import_utils`` and the critic's
    value-head loader keep verl's own) to :func:`trl_has_value_head`: with a TRL that has the class
    (verl's ``fsdp`` extra pins trl 0.27) verl patches it as before; with TRL 1.x there is nothing to patch.
    Returns whether the rebinding was made (False once verl no longer has that check).
    """
    from verl.models.transformers import monkey_patch

    if not hasattr(monkey_patch, "is_trl_available"):
        return False
    monkey_patch.is_trl_available = trl_has_value_head
    return True


REGISTERED = register_all()
"""The functions registered at import, by verl name."""

neutralise_trl_value_head_patch()
