"""The gradient estimators compared by the bias–variance study (a torch-free registry).

Each entry names a core objective of :func:`sspo.policy_loss` with its hyperparameters, or the
study's own unbiased reference estimator. Everything not given here uses the core defaults. Every name
of ``sspo.OBJECTIVES`` has an entry (a test checks it; this module stays torch-free, so the list is
written out rather than read from ``sspo``).

There are no rollout-corrected variants (``rollout_is``/``rollout_rs``/``bypass_mode``): the study's
sampler μ is the proximal policy ``π_{θ_old}`` itself, so the correction's weight ``π_old/π_rollout``
would be 1 on every token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_OBJECTIVES", "REFERENCE", "VARIANTS", "ObjectiveVariant", "get_variant"]

REFERENCE = "is-reference"
"""Label of the unbiased reference: sequence importance weights with a leave-one-out baseline."""


@dataclass(frozen=True)
class ObjectiveVariant:
    """One gradient estimator: a core objective name plus keyword arguments for ``policy_loss``."""

    label: str
    """Name used in tables, plots and on the command line."""
    objective: str | None
    """Core objective name (``sspo.OBJECTIVES``); ``None`` for the study's reference estimator."""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``sspo.policy_loss`` (gate, clip ranges, temperatures, ...)."""
    loss_agg_mode: str | None = None
    """Aggregation mode; ``None`` keeps the objective's default."""


VARIANTS: dict[str, ObjectiveVariant] = {
    v.label: v
    for v in (
        ObjectiveVariant("sspo-arctan", "sspo", {"gate": "arctan"}),
        ObjectiveVariant("sspo-sigmoid", "sspo", {"gate": "sigmoid"}),
        ObjectiveVariant("sspo-gaussian", "sspo", {"gate": "gaussian"}),
        ObjectiveVariant("grpo", "grpo"),
        ObjectiveVariant("gspo", "gspo"),
        ObjectiveVariant("gmpo", "gmpo"),
        ObjectiveVariant("sapo", "sapo"),
        ObjectiveVariant("cispo", "cispo"),
        ObjectiveVariant("vespo", "vespo"),
        ObjectiveVariant("luspo", "luspo"),
        ObjectiveVariant("dppo_tv", "dppo_tv"),
        ObjectiveVariant("dppo_kl", "dppo_kl"),
        ObjectiveVariant("m2po", "m2po"),
        ObjectiveVariant(REFERENCE, None),
        # not in the default set: GSPO with GRPO's clip range, to separate GSPO's sequence ratio
        # from its default range (3e-4, 4e-4), which is tuned for responses of thousands of tokens
        ObjectiveVariant("gspo-wide", "gspo", {"eps_low": 0.2, "eps_high": 0.2}),
    )
}

DEFAULT_OBJECTIVES: tuple[str, ...] = tuple(label for label in VARIANTS if label != "gspo-wide")


def get_variant(label: str) -> ObjectiveVariant:
    """Look up an estimator by label; the error lists the valid labels."""
    try:
        return VARIANTS[label]
    except KeyError:
        raise ValueError(f"unknown objective {label!r}; valid: {', '.join(VARIANTS)}") from None
