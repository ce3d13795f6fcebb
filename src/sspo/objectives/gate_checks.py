"""Numerical checks a gate must pass before it is used (float64, for every τ in ``CHECK_TAUS``).

- log space (``h_τ(Δ)``): ``h(0) = 0`` and ``h'(0) = 1``;
- ratio space (``f_τ(r)``): ``f(1) = 1``, ``f'(1) = 1``, ``f'`` a bell centred at ``r = 1``
  (``f' ≥ 0``, non-decreasing on ``[0, 1]``, non-increasing on ``[1, ∞)``) and ``f > 0`` on ``[0, ∞)``;
- in both, a given closed-form derivative must match autograd of the gate.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .gates import Gate

CHECK_TAUS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
VALUE_ATOL = 1e-6
SLOPE_ATOL = 1e-3
MONOTONE_ATOL = 1e-12

_F64 = torch.float64
_LOG_POINTS = torch.tensor((0.0, -3.0, -1.0, -0.25, 0.25, 1.0, 3.0), dtype=_F64)
# r on [0, 1] and on [1, 1e12] (past e^20, the default log-ratio clamp), both ascending.
_RATIO_LEFT = torch.linspace(0.0, 1.0, 201, dtype=_F64)
_RATIO_RIGHT = torch.cat([torch.linspace(1.0, 3.0, 201, dtype=_F64),
                          torch.logspace(math.log10(3.0), 12.0, 200, dtype=_F64)[1:]])  # fmt: skip


def _fail(gate: Gate, condition: str, tau, detail: str = "") -> ValueError:
    return ValueError(f"gate {gate.name!r} fails {condition} at tau={float(tau):g}" + (f": {detail}" if detail else ""))


def _at_one_point(gate: Gate, x0: float, tau) -> tuple[float, float]:
    """``(fn(x0), fn'(x0))`` by autograd in float64; any failure of user code is a bad gate."""
    x = torch.tensor([x0], dtype=_F64, requires_grad=True)
    try:
        value = gate.fn(x, tau)
        (slope,) = torch.autograd.grad(value.sum(), x)
    except Exception as exc:  # noqa: BLE001 - report any failure of user code as a bad gate
        raise ValueError(f"gate {gate.name!r}: fn(x, tau) failed on a float64 tensor: {exc}") from exc
    return float(value.detach()), float(slope)


def _check_closed_form(gate: Gate, points: torch.Tensor, tau) -> None:
    if gate.dfn is None:
        return
    closed = gate.derivative(points, tau)
    auto = replace(gate, dfn=None).derivative(points, tau)
    if not torch.allclose(closed, auto, atol=1e-5, rtol=1e-5):
        raise ValueError(
            f"gate {gate.name!r}: the given derivative disagrees with autograd of the gate at tau={float(tau):g}: "
            f"{closed.tolist()} vs {auto.tolist()}"
        )


def _check_log_gate(gate: Gate, tau) -> None:
    h0, dh0 = _at_one_point(gate, 0.0, tau)
    if not abs(h0) <= VALUE_ATOL:
        raise _fail(gate, "h(0) = 0", tau, f"h(0) = {h0:.3g}")
    if not abs(dh0 - 1.0) <= SLOPE_ATOL:
        raise _fail(gate, "h'(0) = 1", tau, f"h'(0) = {dh0:.6g}")
    _check_closed_form(gate, _LOG_POINTS, tau)


def _check_ratio_gate(gate: Gate, tau) -> None:
    f1, df1 = _at_one_point(gate, 1.0, tau)
    if not abs(f1 - 1.0) <= VALUE_ATOL:
        raise _fail(gate, "f(1) = 1", tau, f"f(1) = {f1:.6g}")
    if not abs(df1 - 1.0) <= SLOPE_ATOL:
        raise _fail(gate, "f'(1) = 1", tau, f"f'(1) = {df1:.6g}")
    _check_closed_form(gate, torch.cat([_RATIO_LEFT[::20], _RATIO_RIGHT[::20]]), tau)
    left, right = gate.derivative(_RATIO_LEFT, tau), gate.derivative(_RATIO_RIGHT, tau)
    slope = torch.cat([left, right])
    if not bool((slope >= 0).all()):
        raise _fail(gate, "f' a bell centred at r = 1", tau, "f' < 0 somewhere")
    if not bool((left.diff() >= -MONOTONE_ATOL).all() and (right.diff() <= MONOTONE_ATOL).all()):
        raise _fail(gate, "f' a bell centred at r = 1", tau, "f' must rise on [0, 1] and fall on [1, inf)")
    values = gate.fn(torch.cat([_RATIO_LEFT, _RATIO_RIGHT]), tau).detach()
    bad = ~(values > 0) | ~torch.isfinite(values)
    if bool(bad.any()):
        r = torch.cat([_RATIO_LEFT, _RATIO_RIGHT])[bad][0]
        raise _fail(gate, "f > 0 on [0, inf)", tau, f"f({float(r):.3g}) = {float(values[bad][0]):.3g}")


def check_gate(gate: Gate, *, taus: tuple[float, ...] = CHECK_TAUS) -> None:
    """Raise ``ValueError`` naming the gate, the failed condition and τ unless ``gate`` passes its
    space's conditions for every τ in ``taus``."""
    check = _check_log_gate if gate.space == "log" else _check_ratio_gate
    with torch.enable_grad():  # the checks differentiate: they hold under a caller's torch.no_grad() too
        for tau in taus:
            check(gate, torch.tensor(float(tau), dtype=_F64))
