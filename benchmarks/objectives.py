"""Benchmark: forward+backward time and peak memory of every objective and rollout correction, and
chunked vs naive log-probs.

    python benchmarks/objectives.py [--quick] [--rounds 7] [--only objectives] [--markdown FILE] [--out results.json]

Objectives: the cases are every objective of ``sspo.OBJECTIVES`` and the rollout corrections of
:data:`CORRECTIONS`. Their times come from **one** process per shape, on one torch thread and on the
same tensors: ``--rounds`` rounds, each running every case ``--repeats`` times in a rotated order
(interleaved, so load from other jobs falls on every case alike), timed by the process's CPU time. A
case's ratio to GRPO is its median over the ratios of the rounds (each round's median time over GRPO's);
the range over the rounds is printed too. Peak memory is measured apart, in a fresh subprocess per case
and shape: the rise of the process's peak resident set (VmHWM) over its resident set once the inputs
exist. Log-probs: every measurement in a fresh subprocess, compared to the naive ``log_softmax`` path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

OBJECTIVE_SHAPES = [(64, 1024), (128, 2048), (256, 4096)]
VOCAB = 151_936
BASELINE = "grpo"
TARGET_RATIO = 1.3
"""Issue #20's bound on every objective's and correction's time as a multiple of GRPO's."""

_RS = {"rollout_rs": "token_k1,seq_mean_k3", "rollout_rs_threshold": "2.0,0.01"}
CORRECTIONS: dict[str, tuple[str, dict]] = {
    "grpo+is_token": ("grpo", {"rollout_is": "token"}),
    "grpo+is_seq": ("grpo", {"rollout_is": "sequence"}),
    "grpo+rs": ("grpo", dict(_RS)),
    "grpo+is_token+rs": ("grpo", {"rollout_is": "token", **_RS}),
    "grpo+bypass": ("grpo", {"bypass_mode": True}),
    "grpo+bypass+rs": ("grpo", {"bypass_mode": True, **_RS}),
    "sspo+is_token": ("sspo", {"rollout_is": "token"}),
    "vespo+is_token": ("vespo", {"rollout_is": "token"}),
    "vespo+is_seq": ("vespo", {"rollout_is": "sequence"}),
}
"""Rollout corrections (label: objective, ``policy_loss`` keywords); each gets ``rollout_log_probs``, the
behaviour log-probs moved by N(0, 0.05²) per token. ``rs``: token_k1 with [1/2, 2] and seq_mean_k3 ≤ 0.01."""


def cases() -> dict[str, tuple[str, dict]]:
    """Every case the benchmark measures: each objective with its defaults, then :data:`CORRECTIONS`."""
    import sspo

    return {**{name: (name, {}) for name in sspo.OBJECTIVES}, **CORRECTIONS}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _measure(fn, repeats: int) -> dict:
    fn()  # warm-up
    _reset_peak()
    base = _rss_kib("VmRSS")
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu),
            "peak_mib": (_rss_kib("VmHWM") - base) / 1024}  # fmt: skip


def _objective_inputs(batch: int, length: int):
    """The tensors every case runs on: ``(log_probs leaf, old, advantages, mask, rollout log-probs)``."""
    import torch

    torch.manual_seed(0)
    old = -torch.rand(batch, length) * 3
    lp = (old + 0.3 * torch.randn(batch, length)).requires_grad_(True)
    lengths = torch.randint(length // 4, length + 1, (batch,))
    mask = torch.arange(length)[None] < lengths[:, None]
    adv = torch.randn(batch)
    rollout = old + 0.05 * torch.randn(batch, length)
    return lp, old, adv, mask, rollout


def _objective_step(name: str, kwargs: dict, inputs):
    import sspo

    lp, old, adv, mask, rollout = inputs
    if any(k.startswith(("rollout_", "bypass")) for k in kwargs):
        kwargs = {"rollout_log_probs": rollout, **kwargs}

    def step():
        out = sspo.policy_loss(name, lp, old, adv, mask, **kwargs)
        out.loss.backward()
        lp.grad = None

    return step


def worker_objective_times(batch: int, length: int, rounds: int, repeats: int) -> dict:
    """``{case: [[CPU seconds of each repeat] for each round]}`` of every case, interleaved in this process."""
    import torch

    torch.set_num_threads(1)  # CPU time of one thread: robust to other load on the machine
    inputs = _objective_inputs(batch, length)
    table = cases()
    steps = {name: _objective_step(objective, kwargs, inputs) for name, (objective, kwargs) in table.items()}
    names = list(steps)
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    for k in range(rounds):
        for name in names:
            times[name].append([])
        for r in range(repeats):
            shift = (k * repeats + r) % len(names)
            for name in names[shift:] + names[:shift]:  # rotated: no case always runs first or after another
                c0 = time.process_time()
                steps[name]()
                times[name][-1].append(time.process_time() - c0)
    return times


def worker_objective_peak(name: str, batch: int, length: int) -> dict:
    import torch

    torch.set_num_threads(1)
    objective, kwargs = cases()[name]
    step = _objective_step(objective, kwargs, _objective_inputs(batch, length))
    return _measure(step, 2)


def worker_logprobs(kind: str, rows: int, hidden_size: int, repeats: int) -> dict:
    import torch

    import sspo

    torch.manual_seed(0)
    labels = torch.randint(0, VOCAB, (rows,))
    if kind.endswith("hidden"):
        hidden = torch.randn(rows, hidden_size, requires_grad=True)
        weight = (torch.randn(VOCAB, hidden_size) * 0.02).requires_grad_(True)
        leaves = (hidden, weight)
    else:
        logits = (torch.randn(rows, VOCAB) * 2).requires_grad_(True)
        leaves = (logits,)

    def logits_of():
        return hidden @ weight.T if kind.endswith("hidden") else logits

    def naive():
        logp_all = torch.log_softmax(logits_of().float(), -1)
        logp = logp_all.gather(-1, labels[:, None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def chunked():
        if kind.endswith("hidden"):
            return sspo.token_logprobs_from_hidden(hidden, weight, labels)
        return sspo.token_logprobs(logits, labels)

    fn = naive if kind.startswith("naive") else chunked

    def step():
        logp, entropy = fn()
        (logp.sum() + 0.01 * entropy.sum()).backward()
        for leaf in leaves:
            leaf.grad = None

    return _measure(step, repeats)


def _run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_objectives(shapes, rounds: int, repeats: int, memory: bool = True, echo=print) -> list[dict]:
    """One row per (case, shape): median CPU time, its per-round ratios to GRPO and their median, and
    (``memory``) the peak-memory rise and its ratio to GRPO's."""
    rows = []
    for batch, length in shapes:
        t0 = time.perf_counter()
        times = _run(["objective_times", str(batch), str(length), str(rounds), str(repeats)])
        base = [statistics.median(t) for t in times[BASELINE]]
        peaks = {}
        if memory:
            peaks = {name: _run(["objective_peak", name, str(batch), str(length)])["peak_mib"] for name in times}
        for name, per_round in times.items():
            objective, kwargs = cases()[name]
            ratios = [statistics.median(t) / b for t, b in zip(per_round, base)]
            row = {"case": name, "objective": objective, "kwargs": kwargs, "B": batch, "T": length, "rounds": rounds,
                   "repeats": repeats, "cpu_seconds": statistics.median(x for t in per_round for x in t),
                   "time_ratio": statistics.median(ratios), "time_ratios": ratios}  # fmt: skip
            if memory:
                row["peak_mib"] = peaks[name]
                row["peak_ratio"] = peaks[name] / max(peaks[BASELINE], 1e-9)
            rows.append(row)
        echo(f"  {batch} x {length}: {time.perf_counter() - t0:.0f} s")
    return rows


def objectives_markdown(rows: list[dict]) -> str:
    """Rows: cases; columns: shapes; cells: median CPU-time ratio to GRPO (min–max over the rounds)."""
    shapes = list(dict.fromkeys((r["B"], r["T"]) for r in rows))
    cell = {(r["case"], r["B"], r["T"]): r for r in rows}
    names = list(dict.fromkeys(r["case"] for r in rows))
    rounds = rows[0]["rounds"] if rows else 0
    memory = "peak_mib" in rows[0]
    last = shapes[-1]
    head = "| case | " + " | ".join(f"{b} × {t}" for b, t in shapes) + " |"
    head += f" peak memory × GRPO, {last[0]} × {last[1]} |" if memory else ""
    lines = [head, "|---|" + "---:|" * (len(shapes) + memory)]
    base = [cell[(BASELINE, b, t)]["cpu_seconds"] * 1e3 for b, t in shapes]
    extra = f" {cell[(BASELINE, *last)]['peak_mib']:.0f} MiB |" if memory else ""
    lines.append(f"| {BASELINE} (ms, CPU) | " + " | ".join(f"{ms:.1f}" for ms in base) + " |" + extra)
    for name in names:
        cells = []
        for b, t in shapes:
            r = cell[(name, b, t)]
            text = f"{r['time_ratio']:.2f}"
            if rounds > 1:
                text += f" ({min(r['time_ratios']):.2f}–{max(r['time_ratios']):.2f})"
            cells.append(f"**{text}**" if r["time_ratio"] > TARGET_RATIO else text)
        extra = f" {cell[(name, *last)]['peak_ratio']:.2f} |" if memory else ""
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + extra)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest shapes only")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed steps of each case per round (objectives) or per process (log-probs)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds over every case (median)")
    parser.add_argument("--no-memory", action="store_true", help="objectives: skip the peak-memory subprocesses")
    parser.add_argument("--only", choices=("objectives", "logprobs"), default=None, help="run one part only")
    parser.add_argument("--rows", type=int, default=2048, help="B*T rows for the log-prob benchmark")
    parser.add_argument("--hidden-size", type=int, default=896, help="Qwen2.5-0.5B's hidden size")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="write the objectives' ratio table as Markdown here")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        if kind == "objective_times":
            result = worker_objective_times(*map(int, rest))
        elif kind == "objective_peak":
            result = worker_objective_peak(rest[0], int(rest[1]), int(rest[2]))
        else:
            result = worker_logprobs(kind, int(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return 0

    results: dict = {"objectives": [], "logprobs": []}
    if args.only != "logprobs":
        shapes = OBJECTIVE_SHAPES[:1] if args.quick else OBJECTIVE_SHAPES
        t0 = time.perf_counter()
        results["objectives"] = measure_objectives(shapes, args.rounds, args.repeats, memory=not args.no_memory)
        print(f"{'B':>4} {'T':>5} {'case':<17} {'cpu ms':>8} {'x GRPO':>7} {'min-max':>11} {'peak MiB':>9} {'x GRPO':>7}")
        for r in results["objectives"]:
            spread = f"{min(r['time_ratios']):.2f}-{max(r['time_ratios']):.2f}"
            peak = f"{r['peak_mib']:>9.1f} {r['peak_ratio']:>7.2f}" if "peak_mib" in r else ""
            print(f"{r['B']:>4} {r['T']:>5} {r['case']:<17} {r['cpu_seconds'] * 1e3:>8.1f} {r['time_ratio']:>7.2f} "
                  f"{spread:>11} {peak}")  # fmt: skip
        table = objectives_markdown(results["objectives"])
        over = sorted({r["case"] for r in results["objectives"] if r["time_ratio"] > TARGET_RATIO})
        print(f"\n{table}\n\nabove {TARGET_RATIO}x GRPO: {', '.join(over) or 'none'} "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")

    if args.only != "objectives":
        rows = max(256, args.rows // (8 if args.quick else 1))
        print(f"\nlog-probs + entropy, V={VOCAB}, {rows} rows (fwd+bwd)")
        for source in ("logits", "hidden"):
            naive = _run([f"naive_{source}", str(rows), str(args.hidden_size), str(args.repeats)])
            chunked = _run([f"chunked_{source}", str(rows), str(args.hidden_size), str(args.repeats)])
            row = {"source": source, "rows": rows, "naive": naive, "chunked": chunked,
                   "time_ratio": chunked["seconds"] / naive["seconds"],
                   "cpu_ratio": chunked["cpu_seconds"] / naive["cpu_seconds"],
                   "peak_ratio": chunked["peak_mib"] / naive["peak_mib"]}  # fmt: skip
            results["logprobs"].append(row)
            print(f"from {source:<6}: naive {naive['seconds']:.2f} s / {naive['peak_mib']:.0f} MiB, "
                  f"chunked {chunked['seconds']:.2f} s / {chunked['peak_mib']:.0f} MiB -> "
                  f"time x{row['time_ratio']:.2f} (CPU time x{row['cpu_ratio']:.2f}), peak memory x{row['peak_ratio']:.2f}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
