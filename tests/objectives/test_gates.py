"""The gate family: built-ins equal their formulas and meet their space's conditions for every τ in the
grid; bad gates are refused; a registered ratio gate works in SSPO and SAPO; SAPO refuses log gates."""

import math

import pytest
import torch
from gate_formulas import LOG_GATES, RATIO_GATES, TAUS, h, h_prime, ratio_f, ratio_f_prime
from objective_cases import grad_of, random_case

import sspo
from sspo.objectives import BUILTIN_GATES, Gate, check_gate, gates

F64 = torch.float64
DELTAS = torch.linspace(-20.0, 20.0, 801, dtype=F64)
LEFT = torch.linspace(0.0, 1.0, 1001, dtype=F64)  # r on [0, 1]
RIGHT = torch.cat([torch.linspace(1.0, 4.0, 1001, dtype=F64), torch.logspace(0.61, 12.0, 400, dtype=F64)])


def _autograd(fn, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("name", LOG_GATES + RATIO_GATES)
def test_builtin_gates_equal_their_formulas(name, tau):
    gate, t = sspo.GATES[name], torch.tensor(tau, dtype=F64)
    torch.testing.assert_close(gate.h(DELTAS, t), h(name, DELTAS, t), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(gate.h_prime(DELTAS, t), h_prime(name, DELTAS, t), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(gate.h_prime(DELTAS, t), _autograd(lambda d: h(name, d, t), DELTAS),
                               rtol=1e-10, atol=1e-15)  # fmt: skip
    if name in RATIO_GATES:
        r = torch.cat([LEFT, RIGHT])
        torch.testing.assert_close(gate.f(r, t), ratio_f(name, r, t), rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(gate.f_prime(r, t), ratio_f_prime(name, r, t), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("name", RATIO_GATES)
def test_ratio_gates_meet_the_four_conditions(name, tau):
    """f(1) = 1, f'(1) = 1, f' a bell centred at r = 1, f > 0 on [0, ∞) (up to 1e12 ≫ e^20)."""
    gate, t = sspo.GATES[name], torch.tensor(tau, dtype=F64)
    one = torch.ones(1, dtype=F64)
    assert gate.f(one, t).item() == pytest.approx(1.0, abs=1e-15)
    assert _autograd(lambda r: gate.f(r, t), one).item() == pytest.approx(1.0, abs=1e-15)
    left, right = gate.f_prime(LEFT, t), gate.f_prime(RIGHT, t)  # closed forms (= the formulas, = autograd)
    assert (left >= 0).all() and (right >= 0).all()
    assert (left.diff() >= 0).all() and (right.diff() <= 0).all()
    assert left.max().item() == pytest.approx(1.0, abs=1e-15) and right.max().item() == pytest.approx(1.0, abs=1e-15)
    assert left[0] < 1 and right[-1] < 1e-3  # a bell, not a plateau
    values = gate.f(torch.cat([LEFT, RIGHT]), t)
    assert (values > 0).all() and torch.isfinite(values).all()
    check_gate(gate, taus=(tau,))  # the library's own check agrees


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("name", LOG_GATES)
def test_log_gates_meet_the_four_conditions(name, tau):
    """h(0) = 0, h'(0) = 1, h' a bell centred at Δ = 0, f = exp(h) > 0 (finite) on [−20, 20]."""
    gate, t = sspo.GATES[name], torch.tensor(tau, dtype=F64)
    zero = torch.zeros(1, dtype=F64)
    assert gate.h(zero, t).item() == 0.0
    assert _autograd(lambda d: gate.h(d, t), zero).item() == pytest.approx(1.0, abs=1e-15)
    weight = _autograd(lambda d: gate.h(d, t), DELTAS)
    mid = len(DELTAS) // 2
    assert (weight >= 0).all() and (weight[: mid + 1].diff() >= 0).all() and (weight[mid:].diff() <= 0).all()
    f = torch.exp(gate.h(DELTAS, t))
    assert (f > 0).all() and torch.isfinite(f).all()
    check_gate(gate, taus=(tau,))


def _tanh_ratio(r, tau):
    return 1 + torch.tanh(tau * (r - 1)) / tau


@pytest.mark.parametrize(
    ("fn", "dfn", "message"),
    [
        (lambda r, tau: 1.1 + torch.atan(tau * (r - 1)) / tau, None, r"fails f\(1\) = 1 at tau=0.5: f\(1\) = 1.1"),
        (lambda r, tau: 1 + 2 * torch.atan(tau * (r - 1)) / tau, None, r"fails f'\(1\) = 1 at tau=0.5: f'\(1\) = 2"),
        (lambda r, tau: r + (r - 1) ** 3, None, r"fails f' a bell centred at r = 1 at tau=0.5: f' must rise"),
        (lambda r, tau: 1 + (r - 1) * torch.exp(-((r - 1) ** 2)), None, r"fails f' a bell .*: f' < 0 somewhere"),
        (lambda r, tau: torch.where(r < 1, r, 1 + torch.atan(tau * (r - 1)) / tau), None,
         r"fails f > 0 on \[0, inf\) at tau=0.5: f\(0\) = 0"),
        (_tanh_ratio, lambda r, tau: torch.ones_like(r), "the given derivative disagrees"),
    ],
    ids=["f(1)", "f'(1)", "not-a-bell", "f'<0", "f(0)=0", "lying-derivative"],
)
def test_bad_ratio_gates_are_refused(fn, dfn, message):
    with pytest.raises(ValueError, match=message):
        sspo.register_gate("bad_ratio", fn, dfn, space="ratio")
    assert "bad_ratio" not in sspo.GATES
    with pytest.raises(ValueError, match=message):  # a Gate passed directly is checked the same way
        sspo.policy_loss("sapo", *random_case()[:4], gate=Gate("bad_ratio", fn, dfn, "ratio"))


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match="space must be one of log, ratio, got 'odds'"):
        sspo.register_gate("odd", _tanh_ratio, space="odds")


def test_registered_ratio_gate_works_in_sspo_and_sapo():
    sspo.register_gate("tanh_ratio_test", _tanh_ratio, space="ratio", overwrite=True)
    lp, old, adv, mask = random_case(1)
    n = mask.sum(-1).double()
    g_seqs = (n > 0).sum()
    r = torch.exp(lp.detach() - old)
    tau = torch.where(adv > 0, torch.tensor(1.0, dtype=F64), torch.tensor(1.05, dtype=F64))[:, None]
    f = _tanh_ratio(r, tau)
    ours = sspo.policy_loss("sspo", lp, old, adv, mask, gate="tanh_ratio_test")
    s = torch.exp(torch.where(mask, torch.log(f), 0.0).sum(-1) / n.clamp(min=1))
    torch.testing.assert_close(-ours.loss.detach(), torch.where(n > 0, s * adv, 0.0).sum() / g_seqs, rtol=1e-12, atol=0)
    weight = r * (1 - torch.tanh(tau * (r - 1)) ** 2) / f  # h' = r·f'/f, from autograd of f (no closed form given)
    expected = torch.where(mask, (adv * s / n.clamp(min=1) / g_seqs)[:, None] * weight, 0.0)
    torch.testing.assert_close(-grad_of(ours.loss, lp), expected, rtol=1e-12, atol=1e-14)
    sapo = sspo.policy_loss("sapo", lp, old, adv, mask, gate="tanh_ratio_test")
    value = (torch.where(mask, f * adv[:, None], 0.0).sum(-1) / n.clamp(min=1)).sum() / g_seqs
    torch.testing.assert_close(-sapo.loss.detach(), value, rtol=1e-12, atol=0)


def test_sapo_takes_only_ratio_gates():
    lp, old, adv, mask = random_case()
    with pytest.raises(ValueError, match="gate 'arctan' is a log-space gate; a ratio-space gate is needed here: "
                                         "arctan_ratio, erf_ratio, sigmoid_ratio, softsign_ratio"):  # fmt: skip
        sspo.policy_loss("sapo", lp, old, adv, mask, gate="arctan")
    with pytest.raises(ValueError, match="unknown gate 'tanh'; valid gates: arctan_ratio, erf_ratio"):
        sspo.policy_loss("sapo", lp, old, adv, mask, gate="tanh")


def test_builtin_gates_survive_an_overwrite(monkeypatch):
    """BUILTIN_GATES keeps the definitions even if a user overwrites a registered name."""
    original = sspo.GATES["erf_ratio"]
    monkeypatch.setitem(gates._REGISTRY, "erf_ratio", original)  # restored after the test
    sspo.register_gate("erf_ratio", _tanh_ratio, space="ratio", overwrite=True)
    assert BUILTIN_GATES["erf_ratio"] is original and sspo.GATES["erf_ratio"].fn is _tanh_ratio
    assert original.half_weight_at == pytest.approx(math.sqrt(2 * math.log(2)))


def test_gates_register_and_import_under_no_grad(monkeypatch):
    """Importing sspo (which registers the built-in gates) or registering a gate inside a caller's
    ``torch.no_grad()`` works: the checks turn autograd on for themselves (a rollout worker imports the
    objectives lazily under no_grad)."""
    import subprocess
    import sys

    code = "import torch\nwith torch.no_grad():\n    import sspo.objectives as o\n    print(len(o.GATES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert int(out.stdout.strip()) >= 7
    monkeypatch.setattr(gates, "_REGISTRY", dict(gates._REGISTRY))  # the registry is left as it was
    with torch.no_grad():
        gate = sspo.register_gate("no_grad_arctan", lambda x, tau: torch.atan(tau * x) / tau, overwrite=True)
    assert gate.name == "no_grad_arctan"
