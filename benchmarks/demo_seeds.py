"""The demos on several seeds, measured the way a fresh clone runs them: the README's demo tables.

    python benchmarks/demo_seeds.py --task math --seeds 0 1 2 [--control] [--out runs/demo-seeds]

Each seed is one ``sspo demo --task TASK seed=S`` in its own process, run one after another (so the
wall times are those of a machine running only the demo) with an empty warm-start cache of its own
(``SSPO_CACHE``): the warm start is trained, as on a fresh machine. Writes ``demo_seeds-TASK.json``
(every seed's summary) and ``demo_seeds-TASK.md`` (the table: warm start, after RL, gain, steps,
wall time; the mean and range of the gains) into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_seed(task: str, seed: int, out: Path, *, control: bool, overrides: list[str]) -> dict:
    """One demo run of ``seed`` into ``out/TASK-sS`` with a fresh cache; its ``summary.json``."""
    run_dir = out / f"{task}-s{seed}"
    cmd = [sys.executable, "-m", "sspo.cli", "demo", "--task", task, "--out", str(run_dir), f"seed={seed}",
           "progress=false", *overrides] + (["--control"] if control else [])  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sspo-cache-") as cache:
        start = time.perf_counter()
        with open(out / f"{task}-s{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SSPO_CACHE": cache})
        wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "process_seconds": wall, **summary}


def table(task: str, runs: list[dict]) -> str:
    """The Markdown table of ``runs`` with the gains' mean and range."""
    measure = "pass rate" if task == "code" else "accuracy"
    lines = [f"| seed | warm start {measure} | after RL | gain (points) | RL steps | RL seconds | whole demo (min) |"
             + (" control | control gain |" if "control_sft" in runs[0] else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if "control_sft" in runs[0] else "")]  # fmt: skip
    for r in runs:
        row = (f"| {r['seed']} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | {r['gain_points']:+.1f} | "
               f"{r['steps']} | {r['train_seconds']:.0f} | {r['process_seconds'] / 60:.1f} |")  # fmt: skip
        if "control_sft" in r:
            c = r["control_sft"]
            row += f" {c['accuracy']:.3f} | {100 * (c['accuracy'] - r['accuracy_before']):+.1f} |"
        lines.append(row)
    gains = [r["gain_points"] for r in runs]
    spread = f", sd {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
    lines.append(f"\nGain over {len(gains)} seeds: mean {statistics.mean(gains):+.1f} points, "
                 f"min {min(gains):+.1f}, max {max(gains):+.1f}{spread}.")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="math", choices=("math", "code"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--control", action="store_true", help="also run each demo's supervised control")
    p.add_argument("--out", default="runs/demo-seeds")
    p.add_argument("overrides", nargs="*", help="config overrides passed to every run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args.task, seed, out, control=args.control, overrides=args.overrides))
        print(f"seed {seed}: {runs[-1]['accuracy_before']:.3f} -> {runs[-1]['accuracy_after']:.3f} "
              f"({runs[-1]['gain_points']:+.1f} points, {runs[-1]['process_seconds'] / 60:.1f} min)", flush=True)
    (out / f"demo_seeds-{args.task}.json").write_text(json.dumps(runs, indent=1))
    text = table(args.task, runs)
    (out / f"demo_seeds-{args.task}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
