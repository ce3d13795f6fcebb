"""``sspo study bias-variance``: bias and variance of each objective's policy-gradient estimate.

A tabular autoregressive policy small enough to enumerate (see
:mod:`sspo.experiments.bias_variance.policy`) gives the exact gradient ``∇J(θ)`` of the expected
verifiable reward. For each sequence length and each behaviour-policy drift
``KL(μ ‖ π_θ)`` the study draws M batches of G responses from ``μ = π_{θ_old}``, computes every
objective's gradient estimate with autograd and reports cosine, projection, variance and MSE
against ``∇J`` (definitions in :func:`~sspo.experiments.bias_variance.estimators.gradient_metrics`).

Run ``python -m sspo.experiments.bias_variance.study --help``. This module imports torch lazily so that
``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .objectives import DEFAULT_OBJECTIVES, VARIANTS

__all__ = ["BiasVarianceConfig", "add_arguments", "main", "run_study"]

ADVANTAGE_METHODS = ("grpo", "drgrpo", "rloo")
DRIFTS = ("random", "ascent")
KL_UNITS = ("sequence", "token")


@dataclass
class BiasVarianceConfig:
    """Every knob of the bias–variance study."""

    vocab: int = 4
    """Vocabulary size V of the tabular policy (tokens are the digits 0..V-1)."""
    lengths: tuple[int, ...] = (4, 6, 8)
    """Response lengths L to study; V**L sequences are enumerated (keep V**L <= ~1e6)."""
    kl_targets: tuple[float, ...] = (0.0, 0.01, 0.05, 0.2, 0.5)
    """Behaviour-policy drifts KL(mu || pi_theta), in nats, hit exactly by bisection."""
    kl_unit: str = "sequence"
    """'sequence': kl_targets are sequence-level KLs; 'token': per token (the sequence KL is L times larger)."""
    group_size: int = 8
    """G, responses per group; advantages are normalised within each group."""
    num_batches: int = 4000
    """M, independent groups (batches) drawn per grid point; each gives one gradient estimate."""
    update_groups: int = 64
    """Groups per optimiser update for the ``nmse_update`` column (the error of a K-group mean)."""
    policies: int = 8
    """Random (theta_old, drift direction) pairs per length; reported metrics are their means."""
    init_scale: float = 1.0
    """Standard deviation of the random logits of theta_old."""
    drift: str = "random"
    """Direction of theta - theta_old: 'random' (isotropic) or 'ascent' (the exact gradient at theta_old,
    i.e. mu is a stale policy that pi_theta has improved on)."""
    reward_target_frac: float = 0.6
    """The reward is 1 when the digits sum to round(reward_target_frac * L * (V - 1)) +- reward_tolerance."""
    reward_tolerance: int = 1
    """Allowed distance of the digit sum from its target (success rates are then about 20-60%)."""
    advantage: str = "grpo"
    """Group advantage for the core objectives: 'grpo' (R - mean)/std, 'drgrpo' R - mean, or 'rloo'."""
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    """Estimators to compare (labels of sspo.experiments.bias_variance.objectives.VARIANTS)."""
    seed: int = 0
    """Seed of policies, directions and samples; the same samples are shared by all objectives."""
    plots: bool = True
    """Write PNG plots next to the tables."""
    threads: int = 1
    """torch intra-op threads during the study; the work is many small tensor ops, for which one
    thread is fastest (more threads mostly add contention on a shared 2-core machine)."""

    def __post_init__(self) -> None:
        self.lengths = tuple(int(x) for x in self.lengths)
        self.kl_targets = tuple(float(x) for x in self.kl_targets)
        self.objectives = tuple(self.objectives)
        checks = [
            ("vocab", self.vocab >= 2, "must be >= 2"),
            ("lengths", len(self.lengths) > 0 and min(self.lengths) >= 1, "must be non-empty and >= 1"),
            (
                "lengths",
                self.vocab ** max(self.lengths, default=1) <= 2**22,
                "vocab**length must be <= 2**22",
            ),
            ("kl_targets", len(self.kl_targets) > 0 and min(self.kl_targets) >= 0, "must be non-empty, >= 0"),
            ("kl_unit", self.kl_unit in KL_UNITS, f"must be one of {KL_UNITS}"),
            ("group_size", self.group_size >= 2, "must be >= 2"),
            ("num_batches", self.num_batches >= 2, "must be >= 2"),
            ("update_groups", self.update_groups >= 1, "must be >= 1"),
            ("policies", self.policies >= 1, "must be >= 1"),
            ("init_scale", self.init_scale > 0, "must be > 0"),
            ("drift", self.drift in DRIFTS, f"must be one of {DRIFTS}"),
            ("reward_target_frac", 0 <= self.reward_target_frac <= 1, "must be in [0, 1]"),
            ("reward_tolerance", self.reward_tolerance >= 0, "must be >= 0"),
            ("advantage", self.advantage in ADVANTAGE_METHODS, f"must be one of {ADVANTAGE_METHODS}"),
            ("objectives", len(self.objectives) > 0, "must be non-empty"),
            ("threads", self.threads >= 1, "must be >= 1"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"BiasVarianceConfig.{name}={getattr(self, name)!r}: {message}")
        unknown = [o for o in self.objectives if o not in VARIANTS]
        if unknown:
            raise ValueError(
                f"BiasVarianceConfig.objectives: unknown {unknown}; valid: {', '.join(VARIANTS)}"
            )


def reward_target(config: BiasVarianceConfig, length: int) -> int:
    """Target digit sum for responses of ``length`` tokens."""
    return round(config.reward_target_frac * length * (config.vocab - 1))


_SUMMARY_KEYS = (
    "kl_seq", "kl_token", "success_mu", "success_pi", "zero_std_groups",
    "cosine", "cosine_raw", "projection", "cosine_single", "variance", "bias2", "mse", "nmse", "nmse_update", "snr",
    "clipfrac", "gate_attenuated_frac",
)  # fmt: skip


def _summarise(raw: list[dict], config: BiasVarianceConfig) -> list[dict]:
    """Mean over the random policies of each (objective, length, kl_target) cell."""
    import math

    summary = []
    for length in config.lengths:
        for kl_target in config.kl_targets:
            for label in config.objectives:
                cell = [
                    r for r in raw
                    if r["objective"] == label and r["length"] == length and r["kl_target"] == kl_target
                ]  # fmt: skip
                row: dict = {"objective": label, "length": length, "kl_target": kl_target}
                for key in _SUMMARY_KEYS:
                    values = [r[key] for r in cell if key in r and not math.isnan(r[key])]
                    row[key] = sum(values) / len(values) if values else math.nan
                cosines = [r["cosine"] for r in cell if not math.isnan(r["cosine"])]
                mean = row["cosine"]
                row["cosine_std"] = (
                    math.sqrt(sum((c - mean) ** 2 for c in cosines) / (len(cosines) - 1))
                    if len(cosines) > 1 else 0.0
                )  # fmt: skip
                row["policies"] = len(cell)
                summary.append(row)
    return summary


def run_study(
    config: BiasVarianceConfig, out_dir: str | Path | None = None, progress: bool = True
) -> list[dict]:
    """Run the study; return one summary row per (objective, length, kl_target).

    Rows hold the metrics of ``gradient_metrics`` averaged over ``config.policies`` random
    policies, plus the achieved KLs, success rates under μ and π, the fraction of groups whose
    rewards are all equal, and the core's clip/gate fractions. When ``out_dir`` is given it
    writes ``bias_variance.csv`` (summary), ``bias_variance_raw.csv`` (per policy),
    ``bias_variance.md``, ``config.json`` and, if ``config.plots``, ``bias_variance_*.png``.
    """
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, out_dir, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: BiasVarianceConfig, out_dir: str | Path | None, progress: bool) -> list[dict]:
    import torch

    from . import policy as pol

    start = time.perf_counter()
    raw: list[dict] = []
    total = len(config.lengths) * config.policies * len(config.kl_targets)
    with _progress(progress, total) as advance:
        for length in config.lengths:
            sequences = pol.all_sequences(config.vocab, length)
            rewards = pol.digit_sum_reward(sequences, reward_target(config, length), config.reward_tolerance)
            for policy in range(config.policies):
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + length * 1_009 + policy)
                theta_old = pol.init_logits(config.vocab, length, config.init_scale, gen)
                if config.drift == "ascent":
                    direction = pol.exact_gradient(theta_old, sequences, rewards)[1]
                else:
                    direction = torch.randn(theta_old.shape, generator=gen, dtype=torch.float64)
                direction = direction / direction.norm()
                for kl_target in config.kl_targets:
                    common = {"length": length, "policy": policy, "kl_target": kl_target}
                    raw += _grid_point(config, theta_old, direction, sequences, rewards, gen, common)
                    advance()
    summary = _summarise(raw, config)
    seconds = time.perf_counter() - start
    if out_dir is not None:
        from .report import write_report

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(config), "seconds": seconds}, indent=2))
        write_report(summary, raw, config, out, seconds)
    return summary


def _grid_point(config, theta_old, direction, sequences, rewards_all, gen, common: dict) -> list[dict]:
    """Rows of every objective at one (length, policy, KL target): drift, exact gradient, M batches."""
    import torch

    import sspo

    from . import policy as pol
    from .estimators import gradient_metrics, per_batch_gradients

    G, M, length = config.group_size, config.num_batches, sequences.shape[-1]
    seq_target = common["kl_target"] * (length if config.kl_unit == "token" else 1)
    delta, kl = pol.calibrate_drift(theta_old, direction, sequences, seq_target)
    theta = theta_old + delta * direction
    objective, true_grad = pol.exact_gradient(theta, sequences, rewards_all)
    with torch.no_grad():
        mu_probs = pol.sequence_logprobs(theta_old, sequences).exp()
    index = pol.sample_indices(mu_probs, M * G, gen)
    batches = sequences[index].reshape(M, G, length)
    rewards = rewards_all[index].reshape(M, G)
    advantages = sspo.group_advantages(rewards.reshape(-1), group_size=G, method=config.advantage)[0]
    common = {
        **common, "kl_seq": kl, "kl_token": kl / length, "delta": delta,
        "success_mu": float((mu_probs * rewards_all).sum()), "success_pi": float(objective),
        "grad_norm": float(true_grad.norm()),
        "zero_std_groups": float((rewards.std(-1) == 0).double().mean()),
    }  # fmt: skip
    rows = []
    for label in config.objectives:
        grads, extra = per_batch_gradients(
            VARIANTS[label], theta, theta_old, batches, rewards, advantages.reshape(M, G)
        )
        metrics = gradient_metrics(grads, true_grad, config.update_groups)
        rows.append({"objective": label, **common, **metrics, **extra})
    return rows


class _progress:
    """Context manager yielding an ``advance()`` callable; a rich progress bar when enabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=False)
        self._bar.__enter__()
        task = self._bar.add_task("bias-variance", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the study's options to ``parser`` (for ``sspo study bias-variance``)."""
    d = BiasVarianceConfig()
    a = parser.add_argument
    a("--out", default="runs/bias_variance", help="output directory (default: %(default)s)")
    a("--vocab", type=int, default=d.vocab, help="vocabulary size V (default: %(default)s)")
    a("--lengths", type=int, nargs="+", default=list(d.lengths), help="response lengths L")
    a("--kl", type=float, nargs="+", default=list(d.kl_targets), help="KL(mu||pi) targets in nats")
    a("--kl-unit", choices=KL_UNITS, default=d.kl_unit, help="KL per sequence or per token")
    a("--group-size", type=int, default=d.group_size, help="responses per group G")
    a("--batches", type=int, default=d.num_batches, help="groups M drawn per grid point")
    a("--update-groups", type=int, default=d.update_groups, help="groups per update for nmse_update")
    a("--policies", type=int, default=d.policies, help="random policies per length, averaged")
    a("--init-scale", type=float, default=d.init_scale, help="std of the random logits")
    a("--drift", choices=DRIFTS, default=d.drift, help="direction of theta - theta_old")
    a("--target-frac", type=float, default=d.reward_target_frac, help="reward: target sum / (L (V-1))")
    a("--tolerance", type=int, default=d.reward_tolerance, help="reward: allowed |sum - target|")
    a("--advantage", choices=ADVANTAGE_METHODS, default=d.advantage, help="group advantage")
    a("--objectives", nargs="+", choices=list(VARIANTS), default=list(d.objectives), help="estimators")
    a("--seed", type=int, default=d.seed, help="random seed")
    a("--threads", type=int, default=d.threads, help="torch threads (default: %(default)s)")
    a("--no-plots", action="store_true", help="skip the PNG plots")
    a("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BiasVarianceConfig:
    """Build the config from parsed command-line arguments."""
    return BiasVarianceConfig(
        vocab=args.vocab, lengths=tuple(args.lengths), kl_targets=tuple(args.kl), kl_unit=args.kl_unit,
        group_size=args.group_size, num_batches=args.batches, update_groups=args.update_groups,
        policies=args.policies,
        init_scale=args.init_scale, drift=args.drift, reward_target_frac=args.target_frac,
        reward_tolerance=args.tolerance, advantage=args.advantage, objectives=tuple(args.objectives),
        seed=args.seed, plots=not args.no_plots, threads=args.threads,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Entry point for ``sspo study bias-variance``; returns the exit status."""
    config = config_from_args(args)
    start = time.perf_counter()
    run_study(config, args.out, progress=not args.quiet)
    print(f"bias-variance study done in {time.perf_counter() - start:.1f} s; results in {args.out}/")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m sspo.experiments.bias_variance.study", description=__doc__.split("\n")[0]
    )
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
