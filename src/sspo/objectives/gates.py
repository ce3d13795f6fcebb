"""Soft gates of SSPO in log form: ``f(r) = exp(h_τ(log r))`` with ``h(0) = 0``, ``h'(0) = 1``.

``h'_τ(Δ) = r·f'(r)/f(r)`` is the local soft weight on each token's policy gradient (SPEC, Gates):

- ``arctan``  : ``h = atan(τΔ)/τ``                 ``h' = 1/(1 + (τΔ)²)``   (Cauchy-shaped, default)
- ``sigmoid`` : ``h = (4/τ)(σ(τΔ) − 1/2)``         ``h' = 4σ(τΔ)(1 − σ(τΔ))``
- ``gaussian``: ``h = (√π/(2τ))·erf(τΔ)``          ``h' = exp(−(τΔ)²)``

Users add gates with :func:`register_gate`; a gate that fails ``h(0)=0`` or ``h'(0)=1`` is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

GateFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Gate:
    """A gate ``h_τ(Δ)`` and optionally its derivative ``h'_τ(Δ)`` (both elementwise in ``Δ``)."""

    name: str
    h: GateFn
    dh: GateFn | None = None

    def weight(self, delta: Tensor, tau) -> Tensor:
        """``h'_τ(Δ)``, detached: the closed form when given, else autograd of ``h``."""
        delta = delta.detach()
        if self.dh is not None:
            return self.dh(delta, tau).detach()
        with torch.enable_grad():
            d = delta.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.h(d, tau).sum(), d)
        return grad.detach()


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


_REGISTRY: dict[str, Gate] = {}
GATES = MappingProxyType(_REGISTRY)
"""Read-only live view ``name -> Gate`` of the registered gates."""

_CHECK_TAUS = (0.5, 1.0, 2.0)
_CHECK_POINTS = (-3.0, -1.0, -0.25, 0.25, 1.0, 3.0)


def validate_gate(gate: Gate, *, atol: float = 1e-6) -> None:
    """Check ``h_τ(0) = 0`` and ``h'_τ(0) = 1`` (autograd, float64) for several τ; a given ``dh`` must
    match autograd of ``h``. Raises ``ValueError`` naming the gate and the failed condition."""
    for tau in _CHECK_TAUS:
        t = torch.tensor(tau, dtype=torch.float64)
        zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        try:
            h0 = gate.h(zero, t)
            (dh0,) = torch.autograd.grad(h0.sum(), zero)
        except Exception as exc:  # noqa: BLE001 - report any failure of user code as a bad gate
            raise ValueError(f"gate {gate.name!r}: h(delta, tau) failed on a float64 tensor: {exc}") from exc
        h0 = h0.detach()
        if not abs(float(h0)) <= atol:
            raise ValueError(f"gate {gate.name!r} fails h(0) = 0 at tau={tau}: h(0) = {float(h0):.3g}")
        if not abs(float(dh0) - 1.0) <= 1e3 * atol:
            raise ValueError(f"gate {gate.name!r} fails h'(0) = 1 at tau={tau}: h'(0) = {float(dh0):.6g}")
        if gate.dh is not None:
            pts = torch.tensor((0.0, *_CHECK_POINTS), dtype=torch.float64)
            closed = gate.dh(pts, t)
            auto = Gate(gate.name, gate.h).weight(pts, t)
            if not torch.allclose(closed, auto, atol=1e-5, rtol=1e-5):
                raise ValueError(
                    f"gate {gate.name!r}: the given dh disagrees with the derivative of h at tau={tau}: "
                    f"dh={closed.tolist()} vs autograd={auto.tolist()}"
                )


def register_gate(name: str, h: GateFn, dh: GateFn | None = None, *, overwrite: bool = False) -> Gate:
    """Register a gate ``h(delta, tau)`` (and optionally ``dh(delta, tau)``) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"gate name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"gate {name!r} is already registered; pass overwrite=True to replace it")
    gate = Gate(name, h, dh)
    validate_gate(gate)
    _REGISTRY[name] = gate
    return gate


def get_gate(gate: str | Gate) -> Gate:
    """Resolve a gate name (or pass a :class:`Gate` through, validating it)."""
    if isinstance(gate, Gate):
        validate_gate(gate)
        return gate
    if gate not in _REGISTRY:
        raise ValueError(f"unknown gate {gate!r}; valid gates: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[gate]


register_gate("arctan", _arctan, _arctan_dh)
register_gate("sigmoid", _sigmoid, _sigmoid_dh)
register_gate("gaussian", _gaussian, _gaussian_dh)
