"""The gates of docs/objectives.md written out independently of the library (float64 references).

Log-space gates: ``h_τ(Δ)`` and ``h'_τ(Δ)``. Ratio-space gates: ``f_τ(r)`` and ``f'_τ(r)``, read by SSPO
as ``h(Δ) = log f(e^Δ)``, ``h'(Δ) = r·f'(r)/f(r)``.
"""

import math

import torch

LOG_GATES = ("arctan", "sigmoid", "gaussian")
RATIO_GATES = ("arctan_ratio", "erf_ratio", "softsign_ratio", "sigmoid_ratio")
TAUS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def log_h(gate, d, tau):
    if gate == "arctan":
        return torch.atan(tau * d) / tau
    if gate == "sigmoid":
        return 4 / tau * (torch.sigmoid(tau * d) - 0.5)
    return math.sqrt(math.pi) / (2 * tau) * torch.erf(tau * d)


def log_h_prime(gate, d, tau):
    if gate == "arctan":
        return 1 / (1 + (tau * d) ** 2)
    if gate == "sigmoid":
        s = torch.sigmoid(tau * d)
        return 4 * s * (1 - s)
    return torch.exp(-((tau * d) ** 2))


def ratio_f(gate, r, tau):
    x = r - 1
    if gate == "arctan_ratio":
        return 1 + torch.atan(tau * x) / tau
    if gate == "erf_ratio":
        return 1 + math.sqrt(math.pi / 2) / tau * torch.erf(tau * x / math.sqrt(2))
    if gate == "softsign_ratio":
        return 1 + x / torch.sqrt(1 + tau**2 * x**2)
    return 1 + 4 / tau * (torch.sigmoid(tau * x) - 0.5)


def ratio_f_prime(gate, r, tau):
    x = r - 1
    if gate == "arctan_ratio":
        return 1 / (1 + tau**2 * x**2)
    if gate == "erf_ratio":
        return torch.exp(-(tau**2) * x**2 / 2)
    if gate == "softsign_ratio":
        return (1 + tau**2 * x**2) ** -1.5
    s = torch.sigmoid(tau * x)
    return 4 * s * (1 - s)


def h(gate, d, tau):
    """SSPO's log form of any built-in gate."""
    return log_h(gate, d, tau) if gate in LOG_GATES else torch.log(ratio_f(gate, torch.exp(d), tau))


def h_prime(gate, d, tau):
    """SSPO's token weight of any built-in gate."""
    if gate in LOG_GATES:
        return log_h_prime(gate, d, tau)
    r = torch.exp(d)
    return r * ratio_f_prime(gate, r, tau) / ratio_f(gate, r, tau)
