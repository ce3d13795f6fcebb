"""Soft gates on the token ratio, in log space (SSPO's reading) or in ratio space (the SAPO-gate paper's).

A gate is one function with a temperature τ, given in one of two spaces (docs/objectives.md, "Gates"):

- log space, ``f(r) = exp(h_τ(log r))`` with ``h(0) = 0``, ``h'(0) = 1``:

  - ``arctan``  : ``h = atan(τΔ)/τ``                ``h' = 1/(1 + (τΔ)²)``   (Cauchy-shaped, default)
  - ``sigmoid`` : ``h = (4/τ)(σ(τΔ) − 1/2)``        ``h' = 4σ(τΔ)(1 − σ(τΔ))``
  - ``gaussian``: ``h = (√π/(2τ))·erf(τΔ)``         ``h' = exp(−(τΔ)²)``

- ratio space, ``f_τ(r)`` with ``f(1) = 1``, ``f'(1) = 1``, ``f'`` a bell centred at 1, ``f > 0`` on
  ``[0, ∞)``; with ``x = r − 1``:

  - ``arctan_ratio``  : ``f = 1 + atan(τx)/τ``              ``f' = 1/(1 + τ²x²)``
  - ``erf_ratio``     : ``f = 1 + (√(π/2)/τ)·erf(τx/√2)``   ``f' = exp(−τ²x²/2)``
  - ``softsign_ratio``: ``f = 1 + x/√(1 + τ²x²)``           ``f' = (1 + τ²x²)^(−3/2)``
  - ``sigmoid_ratio`` : ``f = 1 + (4/τ)(σ(τx) − 1/2)``      ``f' = 4σ(τx)(1 − σ(τx))``

SSPO reads any gate in log space (a ratio gate through ``h(Δ) = log f(e^Δ)``, ``h'(Δ) = r·f'(r)/f(r)``);
SAPO takes ratio-space gates, ``f`` and ``f'``. :func:`register_gate` adds a gate after checking its
conditions (:mod:`sspo.objectives.gate_checks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from .gate_checks import check_gate

GateFn = Callable[[Tensor, Tensor], Tensor]
SPACES = ("log", "ratio")


def autograd_derivative(fn: GateFn, x: Tensor, tau) -> Tensor:
    """``d fn(x, τ)/dx`` elementwise by autograd, detached."""
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(leaf, tau).sum(), leaf)
    return grad.detach()


@dataclass(frozen=True)
class Gate:
    """A gate ``fn(x, τ)`` (elementwise in ``x``) and optionally its derivative ``dfn(x, τ)``.

    ``space="log"``: ``fn`` is ``h_τ(Δ)``; ``space="ratio"``: ``fn`` is ``f_τ(r)``. ``half_weight_at`` is
    the closed-form ``|τ·x|`` at which ``dfn`` equals ½ when ``dfn`` depends on ``τ·x`` alone (used by
    :func:`sspo.match_clip_temperatures`; ``None`` means "solve numerically").
    """

    name: str
    fn: GateFn
    dfn: GateFn | None = None
    space: str = "log"
    half_weight_at: float | None = None

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"gate {self.name!r}: space must be one of {', '.join(SPACES)}, got {self.space!r}")

    def derivative(self, x: Tensor, tau) -> Tensor:
        """``dfn(x, τ)``, detached: the closed form when given, else autograd of ``fn``."""
        if self.dfn is not None:
            return self.dfn(x.detach(), tau).detach()
        return autograd_derivative(self.fn, x, tau)

    def h(self, delta: Tensor, tau) -> Tensor:
        """Log form ``h_τ(Δ)`` (differentiable); ``log f_τ(e^Δ)`` for a ratio gate."""
        if self.space == "log":
            return self.fn(delta, tau)
        return torch.log(self.fn(torch.exp(delta), tau))

    def h_prime(self, delta: Tensor, tau) -> Tensor:
        """SSPO's token weight ``h'_τ(Δ)``, detached; ``r·f'(r)/f(r)`` for a ratio gate."""
        if self.space == "log":
            return self.derivative(delta, tau)
        ratio = torch.exp(delta.detach())
        return ratio * self.derivative(ratio, tau) / self.fn(ratio, tau).detach()

    def f(self, ratio: Tensor, tau) -> Tensor:
        """Ratio form ``f_τ(r)`` (differentiable) of a ratio-space gate."""
        self._require_ratio_space()
        return self.fn(ratio, tau)

    def f_prime(self, ratio: Tensor, tau) -> Tensor:
        """SAPO's token weight ``f'_τ(r)`` of a ratio-space gate, detached."""
        self._require_ratio_space()
        return self.derivative(ratio, tau)

    def _require_ratio_space(self) -> None:
        if self.space != "ratio":
            raise ValueError(f"gate {self.name!r} is a log-space gate; this needs a ratio-space gate")


# ----------------------------------------------------------------------------- log-space gates
def _arctan(d: Tensor, tau) -> Tensor:
    return torch.atan(tau * d) / tau


def _arctan_dh(d: Tensor, tau) -> Tensor:
    return 1.0 / (1.0 + (tau * d) ** 2)


def _sigmoid(d: Tensor, tau) -> Tensor:
    return (4.0 / tau) * (torch.sigmoid(tau * d) - 0.5)


def _sigmoid_dh(d: Tensor, tau) -> Tensor:
    s = torch.sigmoid(tau * d)
    return 4.0 * s * (1.0 - s)


def _gaussian(d: Tensor, tau) -> Tensor:
    return (math.sqrt(math.pi) / (2.0 * tau)) * torch.erf(tau * d)


def _gaussian_dh(d: Tensor, tau) -> Tensor:
    return torch.exp(-((tau * d) ** 2))


# ----------------------------------------------------------------------------- ratio-space gates
# Each is 1 + (a log-space shape applied to x = r − 1); the same bells, read on r instead of log r.
def _arctan_ratio(r: Tensor, tau) -> Tensor:
    return 1.0 + _arctan(r - 1.0, tau)


def _arctan_ratio_df(r: Tensor, tau) -> Tensor:
    return _arctan_dh(r - 1.0, tau)


def _erf_ratio(r: Tensor, tau) -> Tensor:
    return 1.0 + (math.sqrt(math.pi / 2.0) / tau) * torch.erf(tau * (r - 1.0) / math.sqrt(2.0))


def _erf_ratio_df(r: Tensor, tau) -> Tensor:
    return torch.exp(-0.5 * (tau * (r - 1.0)) ** 2)


def _softsign_ratio(r: Tensor, tau) -> Tensor:
    x = r - 1.0
    return 1.0 + x * torch.rsqrt(1.0 + (tau * x) ** 2)


def _softsign_ratio_df(r: Tensor, tau) -> Tensor:
    return (1.0 + (tau * (r - 1.0)) ** 2) ** -1.5


def _sigmoid_ratio(r: Tensor, tau) -> Tensor:
    return 1.0 + _sigmoid(r - 1.0, tau)


def _sigmoid_ratio_df(r: Tensor, tau) -> Tensor:
    return _sigmoid_dh(r - 1.0, tau)


# ----------------------------------------------------------------------------- the registry
_REGISTRY: dict[str, Gate] = {}
GATES = MappingProxyType(_REGISTRY)
"""Read-only live view ``name -> Gate`` of the registered gates (both spaces)."""
_BUILTIN: dict[str, Gate] = {}
BUILTIN_GATES = MappingProxyType(_BUILTIN)
"""The gates this module defines, as defined here (a user's ``overwrite=True`` does not change them)."""


def validate_gate(gate: Gate, **kwargs) -> None:
    """Check a gate's conditions (see :func:`sspo.objectives.gate_checks.check_gate`); ``ValueError`` if not."""
    if not isinstance(gate, Gate):
        raise ValueError(f"a gate must be a gate name or a Gate, got {type(gate).__name__}")
    check_gate(gate, **kwargs)


def register_gate(
    name: str, fn: GateFn, dfn: GateFn | None = None, *, space: str = "log", overwrite: bool = False
) -> Gate:
    """Register ``fn(x, τ)`` (``h(Δ, τ)`` in log space, ``f(r, τ)`` in ratio space; optionally its
    derivative ``dfn``) under ``name``, after checking the gate conditions of its space."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"gate name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"gate {name!r} is already registered; pass overwrite=True to replace it")
    gate = Gate(name, fn, dfn, space)
    validate_gate(gate)
    _REGISTRY[name] = gate
    return gate


def gate_names(space: str | None = None) -> list[str]:
    """Sorted names of the registered gates (of one space when given)."""
    return sorted(n for n, g in _REGISTRY.items() if space is None or g.space == space)


def get_gate(gate: str | Gate, space: str | None = None) -> Gate:
    """Resolve a gate name (or pass a :class:`Gate` through, validating it); ``space`` restricts the space."""
    if isinstance(gate, str):
        if gate not in _REGISTRY:
            raise ValueError(f"unknown gate {gate!r}; valid gates: {', '.join(gate_names(space))}")
        resolved = _REGISTRY[gate]
    else:
        validate_gate(gate)
        resolved = gate
    if space is not None and resolved.space != space:
        raise ValueError(
            f"gate {resolved.name!r} is a {resolved.space}-space gate; a {space}-space gate is needed here: "
            f"{', '.join(gate_names(space))}"
        )
    return resolved


def _register_builtin(name: str, fn: GateFn, dfn: GateFn, space: str, half_weight_at: float) -> None:
    gate = Gate(name, fn, dfn, space, half_weight_at)
    validate_gate(gate)
    _REGISTRY[name] = _BUILTIN[name] = gate


# |τ·x| where the built-in derivative is ½: 1/(1+u²) = ½ → u = 1; 4σ(1−σ) = ½ → u = 2·asinh(1);
# exp(−u²) = ½ → u = √ln2; exp(−u²/2) = ½ → u = √(2 ln2); (1+u²)^(−3/2) = ½ → u = √(2^(2/3) − 1).
_register_builtin("arctan", _arctan, _arctan_dh, "log", 1.0)
_register_builtin("sigmoid", _sigmoid, _sigmoid_dh, "log", 2.0 * math.asinh(1.0))
_register_builtin("gaussian", _gaussian, _gaussian_dh, "log", math.sqrt(math.log(2.0)))
_register_builtin("arctan_ratio", _arctan_ratio, _arctan_ratio_df, "ratio", 1.0)
_register_builtin("erf_ratio", _erf_ratio, _erf_ratio_df, "ratio", math.sqrt(2.0 * math.log(2.0)))
_register_builtin("softsign_ratio", _softsign_ratio, _softsign_ratio_df, "ratio", math.sqrt(2.0 ** (2 / 3) - 1.0))
_register_builtin("sigmoid_ratio", _sigmoid_ratio, _sigmoid_ratio_df, "ratio", 2.0 * math.asinh(1.0))
