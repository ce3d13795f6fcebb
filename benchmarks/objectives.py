"""Benchmark: forward+backward time and peak memory of every objective, and chunked vs naive log-probs.

    python benchmarks/objectives.py [--quick] [--out results.json]

Every measurement runs in a fresh subprocess; peak memory is the rise of the process's peak resident
set (VmHWM) over its resident set once the inputs exist. Objectives run on one torch thread and are
compared by the median CPU time of their process (robust to other load); wall time is printed too. Ratios are to GRPO (objectives) and to the
naive ``log_softmax`` path (log-probs) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

OBJECTIVE_SHAPES = [(64, 1024), (128, 2048), (256, 4096)]
VOCAB = 151_936


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


def worker_objective(name: str, batch: int, length: int, repeats: int) -> dict:
    import torch

    import sspo

    torch.set_num_threads(1)  # CPU time of one thread: robust to other load on the machine
    torch.manual_seed(0)
    old = -torch.rand(batch, length) * 3
    lp = (old + 0.3 * torch.randn(batch, length)).requires_grad_(True)
    lengths = torch.randint(length // 4, length + 1, (batch,))
    mask = torch.arange(length)[None] < lengths[:, None]
    adv = torch.randn(batch)

    def step():
        out = sspo.policy_loss(name, lp, old, adv, mask)
        out.loss.backward()
        lp.grad = None

    return _measure(step, repeats)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest shapes only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=2048, help="B*T rows for the log-prob benchmark")
    parser.add_argument("--hidden-size", type=int, default=896, help="Qwen2.5-0.5B's hidden size")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        if kind == "objective":
            result = worker_objective(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            result = worker_logprobs(kind, int(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return 0

    import sspo

    results: dict = {"objectives": [], "logprobs": []}
    shapes = OBJECTIVE_SHAPES[:1] if args.quick else OBJECTIVE_SHAPES
    print(f"{'B':>4} {'T':>5} {'objective':<11} {'cpu ms':>8} {'x GRPO':>7} {'wall ms':>8} {'peak MiB':>9} {'x GRPO':>7}")
    for batch, length in shapes:
        base = None
        for name in sspo.OBJECTIVES:
            r = _run(["objective", name, str(batch), str(length), str(args.repeats)])
            base = base or r
            row = {"objective": name, "B": batch, "T": length, **r,
                   "time_ratio": r["cpu_seconds"] / base["cpu_seconds"],
                   "peak_ratio": r["peak_mib"] / max(base["peak_mib"], 1e-9)}  # fmt: skip
            results["objectives"].append(row)
            print(f"{batch:>4} {length:>5} {name:<11} {r['cpu_seconds'] * 1e3:>8.1f} {row['time_ratio']:>7.2f} "
                  f"{r['seconds'] * 1e3:>8.1f} {r['peak_mib']:>9.1f} {row['peak_ratio']:>7.2f}")  # fmt: skip

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
