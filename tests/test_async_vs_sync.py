"""benchmarks/async_vs_sync.py without training: its plan, its configs validate, its figures and tables."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "async_vs_sync.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("async_vs_sync", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_quick_plan_is_one_short_round_of_every_setting(bench):
    args = bench.parse_args(["--quick", "--cores", "2"])
    assert (args.rounds, args.steps, args.warmup, args.out) == (1, 6, 1, bench.QUICK_OUT)
    runs = bench.plan(args)
    assert [r.setting.name for r in runs] == ["sync", "sync-t1", "async-w1-s0", "async-w1-s2"]
    threads = {r.setting.name: (r.setting.threads, r.setting.workers) for r in runs}
    assert threads == {"sync": (2, 0), "sync-t1": (1, 0), "async-w1-s0": (1, 1), "async-w1-s2": (1, 1)}
    assert all(r.steps == 6 and r.warmup == 1 for r in runs)


def test_rounds_rotate_the_order_and_two_workers_skip_staleness_0(bench):
    args = bench.parse_args(["--rounds", "3", "--cores", "4", "--workers", "1", "2", "--sync-threads", "4"])
    names = [s.name for s in bench.settings(args)]
    assert names == ["sync", "async-w1-s0", "async-w1-s2", "async-w2-s2"]
    runs = bench.plan(args)
    assert len(runs) == 12
    assert [r.setting.name for r in runs[4:8]] == names[1:] + names[:1]
    assert {r.setting.name: r.setting.threads for r in runs} == {"sync": 4, "async-w1-s0": 3, "async-w1-s2": 3,
                                                                  "async-w2-s2": 2}  # fmt: skip
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "3", "--warmup", "2"])


def test_every_run_is_a_valid_stress_config(bench, tmp_path):
    from sspo.trainer.config import load_config

    for run in bench.plan(bench.parse_args(["--quick", "--cores", "2"])):
        config = load_config(bench.PRESET, run.overrides(tmp_path / "run"))
        assert config.async_.workers == run.setting.workers and config.threads == run.setting.threads
        assert config.steps == 6 and config.eval.every == 0 and config.rollout.prompts_per_step == 8
        assert (config.device, config.dtype, config.update.mini_batches) == ("cpu", "float32", 2)
    assert bench.shape(run)["samples"] == 8


def _rows(steps: int, step_s: float, staleness: float | None) -> list[dict]:
    extra = {} if staleness is None else {"async/staleness_mean": staleness, "async/staleness_max": staleness,
                                          "async/learner_wait_s": 0.1, "async/worker_wait_s": 0.2}  # fmt: skip
    return [{"step": k, "time/step_s": step_s, "throughput/samples_per_s": 64 / step_s, "rollout/tokens": 640.0,
             "time/rollout_s": 0.1, "time/update_s": step_s - 0.1, "response/length_mean": 10.0,
             "reward/mean": 0.5, **extra} for k in range(1, steps + 1)]  # fmt: skip


def test_measure_summarise_and_markdown(bench, capsys):
    stamps = {k: float(k) for k in range(1, 7)}  # one second per step
    sync = bench.measure(_rows(6, 1.0, None), stamps, warmup=2)
    assert sync["counted_steps"] == 4 and sync["samples"] == 256 and sync["samples_per_s"] == pytest.approx(64.0)
    fast = bench.measure(_rows(6, 0.5, 2.0), {k: k / 2 for k in range(1, 7)}, warmup=2)
    assert fast["samples_per_s"] == pytest.approx(128.0) and fast["staleness_mean"] == 2.0
    args = bench.parse_args(["--quick", "--cores", "2", "--sync-threads", "2", "--staleness", "2"])
    table = bench.settings(args)
    results = [{"round": 0, "setting": bench.asdict(s), "result": r} for s, r in zip(table, [sync, fast], strict=True)]
    summary = bench.summarise(results, table, rounds=1)
    assert summary["async-w1-s2"]["ratio_median"] == pytest.approx(2.0)
    assert summary["async-w1-s2"]["staleness_mean"] == 2.0
    meta = {"command": "x", "cores": 2, "machine": "m", "torch": "t", "date": "d", "load_before": "0",
            "load_after": "0", "quick": True, "preset": "stress", "rounds": 1, "steps": 6, "warmup": 2,
            "shape": {"prompts": 8, "samples": 8, "max_new_tokens": 40, "mini_batches": 2, "epochs": 1,
                      "objective": "sspo", "model": "tiny", "dtype": "float32", "device": "cpu"}}  # fmt: skip
    text = bench.markdown({"meta": meta, "summary": summary})
    assert "| `async-w1-s2` |" in text and "2.00 (2.00–2.00)" in text and "smoke run" in text
    assert "8 prompts x 8 samples of <= 40 tokens, 2 updates per step" in text


def test_dry_run_prints_the_plan(bench, capsys):
    bench.main(["--quick", "--dry-run", "--cores", "2"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.startswith("round 1:") for line in out)
    assert "async.workers=1 async.max_staleness=2" in out[-1]
