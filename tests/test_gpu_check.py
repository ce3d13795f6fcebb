"""benchmarks/gpu_check.py, the device machine's prepared check, run tiny on the CPU so it cannot rot."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--threads", "1",
                           "--time-limit", "120", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALL CHECKS PASSED" in proc.stdout
    return json.loads(out.read_text())


def test_every_section_ran_and_passed(report):
    assert report["ok"] is True and report["failed"] == []
    for name in ("objectives", "logprobs", "trainer", "decoder"):
        assert report[name]["status"] == "ok", report[name].get("traceback")
        assert report[name]["checks"] and all(report[name]["checks"].values())
    assert report["meta"]["device"] == "cpu" and report["meta"]["tiny"] is True
    assert report["model"]["status"] == "ok" and report["model"]["n_params"] > 0


def test_objectives_match_float64_in_float32(report):
    import sspo

    results = report["objectives"]["results"]
    assert set(results) == set(sspo.OBJECTIVES)
    for name, by_dtype in results.items():
        f32, bf16 = by_dtype["float32"], by_dtype["bfloat16"]
        assert f32["loss_rel_err"] < 1e-5 and f32["grad_max_rel_err"] < 1e-5, name
        assert bf16["grad_max_rel_err"] < 1e-2, name


def test_logprobs_match_float64(report):
    results = report["logprobs"]["results"]
    assert set(results) == {"logits/float32", "logits/bfloat16", "hidden/float32", "hidden/bfloat16"}
    for key in ("logits/float32", "hidden/float32"):
        r = results[key]
        assert r["logp"]["max_abs"] < 1e-4 and r["entropy"]["max_abs"] < 1e-4, key
        assert all(v["max_rel"] < 1e-4 for k, v in r.items() if k.startswith("grad_")), key
    assert {"grad_hidden", "grad_weight"} <= set(results["hidden/float32"])


def test_trainer_figures(report):
    t = report["trainer"]
    assert t["preset"] == "qwen2.5-0.5b-gsm8k-sspo" and t["objective"]["name"] == "sspo"
    assert t["timed_updates"] == 4 and t["samples_per_s"] > 0 and t["tokens_per_s"] > 0
    assert all(x == x for x in t["loss"] + t["grad_norm"])  # finite (NaN != NaN)
    assert t["mfu"] is None and t["peak_memory_gib"] is None  # no peak FLOP/s nor CUDA memory on a CPU


def test_decoder_matches_generate(report):
    greedy = report["decoder"]["greedy"]
    assert set(greedy) == {"float32/distinct", "float32/grouped", "bfloat16/distinct", "bfloat16/grouped"}
    for key in ("float32/distinct", "float32/grouped"):
        assert greedy[key]["exact_match"] is True, greedy[key]
        assert greedy[key]["fast_tokens_per_s"] > 0 and greedy[key]["generate_tokens_per_s"] > 0
    assert report["decoder"]["sampling_preset"]["tokens_per_s"] > 0


def test_a_broken_section_is_recorded_and_fails_the_run(tmp_path):
    gc = _module()
    report = {"meta": {}}

    def broken():
        raise RuntimeError("boom")

    gc.run_section("good", lambda: {"checks": {"x": True}}, report, tmp_path / "r.json")
    gc.run_section("bad", broken, report, tmp_path / "r.json")
    gc.run_section("wrong", lambda: {"checks": {"y": False}}, report, tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["good"]["status"] == "ok" and "RuntimeError: boom" in saved["bad"]["error"]
    assert saved["ok"] is False and saved["failed"] == ["bad: error", "wrong/y"]
