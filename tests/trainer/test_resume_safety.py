"""Resuming is safe: a truncated newest checkpoint is skipped for the newest intact one, Ctrl-C stops a run
with one line and status 130 and leaves it resumable exactly, a run without a checkpoint is not silently
retrained from scratch, what a run was trained with cannot be changed by accident, a complete run is
left as it is, and every file of a run gets the same permissions.

Every expected failure is one line ``sspo <command>: error: <field>: <what to do>`` on stderr, status 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainer_cases import TINY, tiny_config

from sspo.cli import main
from sspo.trainer import Trainer
from sspo.trainer.checkpoint import checkpoint_dirs, read_checkpoint
from sspo.trainer.config import to_dict
from sspo.trainer.metrics_log import read_metrics

TIMING = ("time/", "throughput/")


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _quiet(*args):
    return None


def _one_error_line(capsys, argv: list[str], expected: str, status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(expected), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-step run with a checkpoint after every step (the last 2 kept): copy it, never change it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    Trainer(tiny_config(run, "steps=3", "checkpoint_every=1"), log=_quiet).run()
    return run


def _copy(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def _truncate(path: Path, size: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])


# ----------------------------------------------------------------------------- 1. truncated checkpoints
@pytest.mark.parametrize(("name", "size"), [("model.safetensors", 100), ("state.pt", None), ("trainer_state.json", 10)])
def test_resume_skips_a_truncated_newest_checkpoint_for_the_newest_intact_one(finished, tmp_path, capsys, name, size):
    run = _copy(finished, tmp_path)
    (run / "final_metrics.json").unlink()  # killed while the newest checkpoint was being copied out, say
    _truncate(run / "checkpoints" / "step_000003" / name, size)
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "skipped checkpoint" in line]
    assert len(skipped) == 1 and "step_000003" in skipped[0] and name in skipped[0], out
    assert "resumed" in out and "at step 2" in out
    # the same run as one never broken, the broken checkpoint kept aside, a whole one in its place
    assert _comparable(read_metrics(run)) == _comparable(read_metrics(finished))
    assert (run / "checkpoints" / "broken-step_000003" / name).is_file()
    assert [p.name for p in checkpoint_dirs(run)] == ["step_000002", "step_000003"]
    assert read_checkpoint(run / "checkpoints" / "step_000003")["trainer_state"]["step"] == 3
    a = json.loads((finished / "final_metrics.json").read_text())
    b = json.loads((run / "final_metrics.json").read_text())
    assert a["accuracy_after"] == b["accuracy_after"] and b["steps"] == 3


def test_resume_with_no_intact_checkpoint_is_one_line(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    _truncate(run / "checkpoints" / "step_000003" / "model.safetensors", 100)
    _truncate(run / "checkpoints" / "step_000002" / "state.pt")
    before = (run / "metrics.jsonl").read_bytes()
    line = _one_error_line(capsys, ["resume", str(run)], "sspo resume: error: run_dir: no checkpoint of")
    assert "step_000003: model.safetensors" in line and "step_000002: state.pt" in line
    assert "sspo train --config" in line
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing touched
    assert [p.name for p in checkpoint_dirs(run)] == ["step_000002", "step_000003"]


# ----------------------------------------------------------------------------- 2. Ctrl-C
def test_ctrl_c_stops_with_one_line_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    args = [*TINY, "steps=5", "checkpoint_every=1", "update.staleness=1", "objective.name=grpo"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert main(["train", *args, f"out_dir={whole}"]) == 0
    capsys.readouterr()

    real = Trainer.train_step

    def interrupt_at(step):
        def train_step(self, s):
            if s == step:
                raise KeyboardInterrupt
            return real(self, s)

        return train_step

    monkeypatch.setattr(Trainer, "train_step", interrupt_at(3))
    line = _one_error_line(capsys, ["train", *args, f"out_dir={run}"], "sspo train: interrupted at step 3", 130)
    assert line == f"sspo train: interrupted at step 3 (last checkpoint: step 2); continue with: sspo resume {run}"
    assert [p.name for p in checkpoint_dirs(run)] == ["step_000001", "step_000002"]
    assert not list((run / "checkpoints").glob(".tmp-*")) and not (run / "final_metrics.json").exists()

    monkeypatch.setattr(Trainer, "train_step", interrupt_at(5))  # interrupted again, while resuming
    line = _one_error_line(capsys, ["resume", str(run)], "sspo resume: interrupted at step 5", 130)
    assert line.endswith(f"(last checkpoint: step 4); continue with: sspo resume {run}")

    monkeypatch.setattr(Trainer, "train_step", real)
    assert main(["resume", str(run)]) == 0
    assert _comparable(read_metrics(run)) == _comparable(read_metrics(whole))
    a = json.loads((whole / "final_metrics.json").read_text())
    b = json.loads((run / "final_metrics.json").read_text())
    assert a["accuracy_after"] == b["accuracy_after"] and b["steps"] == 5


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    def train_step(self, step):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", train_step)
    line = _one_error_line(capsys, ["train", *TINY, "steps=5", f"out_dir={tmp_path}"],
                           "sspo train: interrupted at step 1, before the first checkpoint", 130)  # fmt: skip
    assert f"sspo train --config {tmp_path / 'config.yaml'}" in line


def test_sigint_to_a_training_process_group_is_one_line_and_status_130(tmp_path):
    """A real Ctrl-C: SIGINT to the whole process group (the trainer and its reward workers)."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sspo.cli", "train", *TINY, "steps=40", "checkpoint_every=1",
                             f"out_dir={run}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # its own group, as a terminal's foreground job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step_000002").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sspo train: interrupted at step ") and lines[0].endswith(f"sspo resume {run}")
    step = int(lines[0].split("interrupted at step ")[1].split()[0])
    assert 2 <= step < 40  # the signal may land while step 2's checkpoint is being completed
    assert all(read_checkpoint(p)["trainer_state"]["step"] <= step for p in checkpoint_dirs(run))  # no half checkpoint


# ----------------------------------------------------------------------------- 3. no checkpoint
def test_resume_without_a_checkpoint_refuses_to_train_from_scratch(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(tiny_config(run, "steps=2")), sort_keys=False))
    line = _one_error_line(capsys, ["resume", str(run), "--allow-changes", "optim.lr=1e-4"],
                           f"sspo resume: error: run_dir: {run} has a config.yaml but no checkpoint")  # fmt: skip
    assert f"sspo train --config {run / 'config.yaml'} optim.lr=1e-4 out_dir=NEW_DIR" in line
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # nothing trained, nothing written


# ----------------------------------------------------------------------------- 4. changes on resume
@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        (["objective.name=grpo"], "objective.name: resume continues the run"),
        (["objective.params.tau_pos=2.0"], "objective.params.tau_pos"),
        (["seed=1"], "seed"),
        (["task.train_size=32", "rollout.samples_per_prompt=8"], "task.train_size, rollout.samples_per_prompt"),
        (["task.options.max_steps=2"], "task.options.max_steps"),
        (["optim.lr=1e-4", "steps=9"], "optim.lr"),  # steps may change; the rate may not, unasked
    ],
)
def test_resume_refuses_to_change_what_the_run_was_trained_with(finished, tmp_path, capsys, overrides, fields):
    run = _copy(finished, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    line = _one_error_line(capsys, ["resume", str(run), *overrides], f"sspo resume: error: {fields}")
    assert "--allow-changes" in line and "out_dir=NEW_DIR" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_extends_a_run_and_allow_changes_takes_effect(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    assert main(["resume", str(run), "steps=4", "eval.num_problems=3"]) == 0  # allowed: no flag needed
    assert json.loads((run / "final_metrics.json").read_text())["steps"] == 4
    capsys.readouterr()
    assert main(["resume", str(run), "--allow-changes", "steps=5", "optim.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr 0.0003 -> 0.0001" in out
    rows = [r for r in read_metrics(run) if "lr" in r]
    assert [r["lr"] for r in rows if r["step"] == 4] == [3e-4] and [r["lr"] for r in rows if r["step"] == 5] == [1e-4]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 1e-4


def test_resuming_a_complete_run_says_so_and_rewrites_nothing(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run} is already complete: step 3 of steps=3 is reached; nothing was run or rewritten" in out
    assert '"accuracy_after"' in out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before


# ----------------------------------------------------------------------------- 5. permissions
@pytest.fixture()
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_every_file_of_a_run_has_the_mode_of_a_plain_file(tmp_path, umask_002):
    run = tmp_path / "run"
    Trainer(tiny_config(run, "steps=2", "checkpoint_every=1", "update.staleness=1"), log=_quiet).run()
    with open(run / "plain", "w"):
        pass
    mode = (run / "plain").stat().st_mode & 0o777
    assert mode == 0o664
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in run.rglob("*") if p.is_file()}
    assert "final_model/model.safetensors" in modes and "checkpoints/step_000002/behaviour_0.safetensors" in modes
    assert {k: v for k, v in modes.items() if v != oct(mode)} == {}


def test_checkpoint_state_is_read_onto_the_cpu(finished, tmp_path, monkeypatch):
    """``state.pt`` of a GPU run holds CUDA tensors (optimizer moments, RNG states): it is read with
    ``map_location="cpu"`` so that the run resumes on any machine (the optimizer moves its state onto the
    parameters' device when it loads)."""
    import torch

    seen = {}
    real_load = torch.load

    def recording_load(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    checkpoint = read_checkpoint(checkpoint_dirs(_copy(finished, tmp_path))[-1])
    assert seen.get("map_location") == "cpu" and seen.get("weights_only") is True
    assert all(v.device.type == "cpu" for v in checkpoint["state"]["optimizer"]["state"][0].values() if torch.is_tensor(v))


def test_a_fresh_run_over_one_that_wrote_no_checkpoint_starts_its_own_metrics(tmp_path):
    """An earlier run in the folder stopped before its first checkpoint: the new run's ``metrics.jsonl``
    holds its own rows only, and the old rows are kept as ``metrics.previous.jsonl``."""
    run = tmp_path / "run"
    run.mkdir()
    old_rows = [{"step": 1, "loss": 123.0}, {"step": 2, "loss": 456.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    lines = []
    Trainer(tiny_config(run, "steps=2"), log=lines.append).run()
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(r.get("loss") not in (123.0, 456.0) for r in rows)
    previous = [json.loads(line) for line in (run / "metrics.previous.jsonl").read_text().splitlines()]
    assert previous == old_rows
    assert any("set aside as metrics.previous.jsonl" in line for line in lines)
