"""Property tests: finite losses and gradients under extreme inputs; the arctan weight stays bounded."""

import math

import pytest
import torch
from gate_formulas import RATIO_GATES
from hypothesis import given, settings
from hypothesis import strategies as st

import sspo

FLOATS = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@st.composite
def cases(draw, dtype=torch.float32):
    b = draw(st.integers(1, 5))
    t = draw(st.integers(1, 7))
    delta = torch.tensor(draw(st.lists(FLOATS, min_size=b * t, max_size=b * t)), dtype=torch.float64).view(b, t)
    old = -torch.rand(b, t, dtype=torch.float64) * 5
    lengths = torch.tensor(draw(st.lists(st.integers(0, t), min_size=b, max_size=b)))
    mask = torch.arange(t)[None, :] < lengths[:, None]
    adv = torch.tensor(draw(st.lists(st.floats(-5, 5), min_size=b, max_size=b)), dtype=torch.float64)
    lp = (old + delta).to(dtype)
    lp = torch.where(mask, lp, torch.tensor(math.nan, dtype=dtype))  # NaN in every masked slot
    old = torch.where(mask, old.to(dtype), torch.tensor(math.inf, dtype=dtype))
    return lp.detach().requires_grad_(True), old, adv.to(dtype), mask


@pytest.mark.parametrize("name", sspo.OBJECTIVES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_finite_loss_and_gradient(name, dtype, data):
    lp, old, adv, mask = data.draw(cases(dtype))
    out = sspo.policy_loss(name, lp, old, adv, mask)
    assert torch.isfinite(out.loss)
    (g,) = torch.autograd.grad(out.loss, lp)
    assert g.dtype == dtype
    assert torch.isfinite(g).all()
    assert (g[~mask] == 0).all()
    if not mask.any():
        assert out.loss.item() == 0.0
    for key, value in out.metrics.items():
        assert torch.isfinite(value), key


@pytest.mark.parametrize(("name", "gate"), [(o, g) for o in ("sspo", "sapo") for g in RATIO_GATES])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), tau=st.sampled_from([0.5, 10.0, 20.0]))
def test_ratio_gates_stay_finite_at_the_clamp(name, gate, data, tau):
    """Log-ratios up to ±1e4 (clamped to ±20) through every ratio gate, in float32: finite loss, gradient
    and metrics; masked NaN/inf never leak into the gradient."""
    lp, old, adv, mask = data.draw(cases(torch.float32))
    out = sspo.policy_loss(name, lp, old, adv, mask, gate=gate, tau_pos=tau, tau_neg=tau)
    (g,) = torch.autograd.grad(out.loss, lp)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all() and (g[~mask] == 0).all()
    for key, value in out.metrics.items():
        assert torch.isfinite(value), key
    assert 0.0 <= out.metrics["update/effective_ratio"].item() <= 1.0


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_arctan_weight_is_bounded(tau, data):
    lp, old, adv, mask = data.draw(cases(torch.float64))
    out = sspo.policy_loss("sspo", lp, old, adv, mask, tau_pos=tau, tau_neg=tau)
    if mask.any():
        bound = math.pi / (2 * tau)
        assert out.metrics["seq_weight/min"].item() >= math.exp(-bound) * (1 - 1e-12)
        assert out.metrics["seq_weight/max"].item() <= math.exp(bound) * (1 + 1e-12)


def test_float64_in_float64_math():
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    out = sspo.policy_loss("sspo", lp, lp.detach() - 1e-9, torch.ones(2, dtype=torch.float64), torch.ones(2, 3))
    assert out.loss.dtype == torch.float64
    # a 1e-9 log-ratio survives only in float64: s = exp(atan(1e-9)) ≈ 1 + 1e-9
    assert out.loss.item() == pytest.approx(-(1 + 1e-9), abs=1e-15)
