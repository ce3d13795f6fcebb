"""Throughput of the sandboxed execution reward (``sspo.rewards.CodeScorer``).

Scores all 164 HumanEval reference solutions against their tests, each in a fresh sandboxed
child, and prints programs per second and the pass count for each run, with the machine's load
average (other jobs sharing the cores lower the figure). The target is >= 200 programs/s on 2 cores.

    python benchmarks/code_reward.py [--data ../shared/data/code] [--workers 2,4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "code"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory holding humaneval.jsonl.gz")
    parser.add_argument("--workers", default="", help="comma-separated judge counts to try (default: the scorer's, two per core)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per worker count")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 164 problems per run")
    args = parser.parse_args()

    path = args.data / "humaneval.jsonl.gz"
    if not path.is_file():
        sys.exit(f"code_reward benchmark: {path} not found; pass --data DIR (see ../shared/data/code/README.md)")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]

    from sspo.rewards import CodeScorer

    problems = [{"tests": r["test"], "entry_point": r["entry_point"], "prefix": r["prompt"]} for r in rows]
    completions = [r["canonical_solution"] for r in rows]
    cores = len(os.sched_getaffinity(0))
    counts = [int(w) for w in args.workers.split(",") if w] or [None]
    print(f"cores available: {cores}; {len(rows)} HumanEval references x {args.rounds} rounds per run")
    for workers in counts:
        with CodeScorer(workers=workers, timeout=10.0) as scorer:
            scorer.warmup()
            workers = scorer.workers
            print(f"workers={workers}  isolation: {scorer.layers}  missing: {scorer.missing_layers or 'none'}")
            rates = []
            for run in range(args.repeats):
                load = os.getloadavg()[0]
                start = time.perf_counter()
                passed = 0
                for _ in range(args.rounds):
                    passed += sum(g.score == 1.0 for g in scorer.grade_batch(completions, problems))
                rate = args.rounds * len(rows) / (time.perf_counter() - start)
                rates.append(rate)
                print(
                    f"  run {run + 1}: {rate:6.1f} programs/s  passed {passed}/{args.rounds * len(rows)}  "
                    f"load average before/after {load:.2f}/{os.getloadavg()[0]:.2f}"
                )
            print(f"  workers={workers}: median {statistics.median(rates):.1f}, best {max(rates):.1f} programs/s")


if __name__ == "__main__":
    main()
