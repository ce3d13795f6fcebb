"""Checkpoints: written atomically (temporary folder, then rename), the last N kept.

``step_000010/`` holds ``model.safetensors`` (the policy), ``behaviour_{i}.safetensors`` (parameter
snapshots kept for the staleness knob), ``state.pt`` (optimizer, scheduler and RNG state; loaded with
``weights_only=True``) and ``trainer_state.json`` (step, update count, elapsed time). Files get the
mode any file created with ``open()`` gets (``0o666`` less the umask; safetensors itself writes
``0o600``). :func:`newest_intact_checkpoint` is what a resume loads: the newest checkpoint whose files
all read back, skipping (and naming) truncated or corrupt ones.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

PREFIX = "step_"
BROKEN_PREFIX = "broken-"
"""A checkpoint a resume found unreadable is renamed ``broken-step_NNNNNN`` (kept, no longer loaded)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back (a truncated or corrupt file, a missing one)."""


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def match_file_mode(*paths: str | Path) -> None:
    """Give files the mode a file created with ``open()`` gets (``0o666`` less the umask): safetensors
    writes its files ``0o600``, while every other file of a run is made the ordinary way."""
    mode = 0o666 & ~_umask()
    for path in paths:
        path = Path(path)
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


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
    match_file_mode(*tmp.iterdir())
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path) -> dict:
    """Read checkpoint ``path`` into memory without touching any model: ``{"path", "trainer_state",
    "state", "snapshots"}``. Every file is checked (``model.safetensors`` by its header, which covers the
    whole file, so a truncated one is found without loading it); anything unreadable raises
    :class:`CheckpointError` ``"<file>: <why>"``."""
    path = Path(path)

    def fail(name: str, exc: BaseException) -> CheckpointError:
        why = " ".join(str(exc).split()) or type(exc).__name__
        return CheckpointError(f"{name}: {why[:200]}")

    try:
        trainer_state = json.loads((path / "trainer_state.json").read_text())
        step, num_snapshots = int(trainer_state["step"]), int(trainer_state["num_snapshots"])
        _py_rng_from_json(trainer_state["python_rng"])
    except Exception as exc:  # noqa: BLE001 - any way this file fails to read makes the checkpoint unusable
        raise fail("trainer_state.json", exc) from exc
    if step != int(path.name[len(PREFIX) :]):
        raise CheckpointError(f"trainer_state.json: holds step {step}, not the folder's")
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            if not list(f.keys()):
                raise ValueError("holds no tensors")
    except Exception as exc:  # noqa: BLE001
        raise fail("model.safetensors", exc) from exc
    snapshots = []
    for i in range(num_snapshots):
        name = f"behaviour_{i}.safetensors"
        try:
            snapshots.append(load_file(str(path / name)))
        except Exception as exc:  # noqa: BLE001
            raise fail(name, exc) from exc
    try:
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")  # a GPU run resumes anywhere
        missing = [k for k in ("optimizer", "scheduler", "torch_rng", "cuda_rng") if k not in state]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
    except Exception as exc:  # noqa: BLE001
        raise fail("state.pt", exc) from exc
    return {"path": path, "trainer_state": trainer_state, "state": state, "snapshots": snapshots}


def newest_intact_checkpoint(run_dir: str | Path) -> tuple[dict | None, list[tuple[Path, str]]]:
    """``(checkpoint, skipped)``: the newest checkpoint of ``run_dir`` that :func:`read_checkpoint`
    reads back (``None`` if none does), and the newer ones it skipped with why, newest first."""
    skipped = []
    for path in reversed(checkpoint_dirs(run_dir)):
        try:
            return read_checkpoint(path), skipped
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
    return None, skipped


def set_broken_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to ``broken-step_NNNNNN``: kept for inspection, but neither
    loaded nor counted among the checkpoints kept (a new checkpoint of its step replaces nothing)."""
    target = path.with_name(BROKEN_PREFIX + path.name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target


def apply_checkpoint(checkpoint: dict, *, model, optimizer, scheduler) -> tuple[dict, list[dict]]:
    """Restore model, optimizer, scheduler and RNG state from :func:`read_checkpoint`'s result;
    return ``(trainer_state, snapshots)``."""
    path, state = checkpoint["path"], checkpoint["state"]
    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    trainer_state = dict(checkpoint["trainer_state"])
    random.setstate(_py_rng_from_json(trainer_state.pop("python_rng")))
    return trainer_state, checkpoint["snapshots"]


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> tuple[dict, list[dict]]:
    """Restore model, optimizer, scheduler and RNG state; return ``(trainer_state, snapshots)``.
    :class:`CheckpointError` (before anything is changed) when a file of it cannot be read."""
    return apply_checkpoint(read_checkpoint(path), model=model, optimizer=optimizer, scheduler=scheduler)


def _py_rng_to_json():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_rng_from_json(value):
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
