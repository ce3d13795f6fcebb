"""Checkpoints: written atomically (temporary folder, then rename), the last N kept.

``step_000010/`` holds ``model.safetensors`` (the policy), ``behaviour_{i}.safetensors`` (parameter
snapshots kept for the staleness knob), ``state.pt`` (optimizer, scheduler and RNG state; loaded with
``weights_only=True``) and ``trainer_state.json`` (step, update count, elapsed time).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

PREFIX = "step_"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir, *, step: int, model, optimizer, scheduler, snapshots, trainer_state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    for i, snap in enumerate(snapshots):
        save_file({k: v.contiguous() for k, v in snap.items()}, str(tmp / f"behaviour_{i}.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / "state.pt",
    )
    state = {**trainer_state, "step": step, "num_snapshots": len(snapshots), "python_rng": _py_rng_to_json()}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> tuple[dict, list[dict]]:
    """Restore model, optimizer, scheduler and RNG state; return ``(trainer_state, snapshots)``."""
    load_model(model, str(path / "model.safetensors"))
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    random.setstate(_py_rng_from_json(trainer_state.pop("python_rng")))
    snapshots = [load_file(str(path / f"behaviour_{i}.safetensors")) for i in range(trainer_state["num_snapshots"])]
    return trainer_state, snapshots


def _py_rng_to_json():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_rng_from_json(value):
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
