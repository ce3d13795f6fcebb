"""Run logs: ``metrics.jsonl`` (one JSON object per step), TensorBoard events, a live progress bar.

Non-finite values are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (strict JSON
has no such numbers; ``null`` would hide them) and read back as floats by :func:`read_jsonl`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
"""How non-finite floats are spelled in ``metrics.jsonl``."""


def _decode_nonfinite(row: dict) -> dict:
    return {k: NONFINITE[v] if isinstance(v, str) and v in NONFINITE else v for k, v in row.items()}


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete lines of a JSON-lines file (a torn last line is ignored; a missing file is empty)."""
    path = Path(path)
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            rows.append(_decode_nonfinite(row) if isinstance(row, dict) else row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A run's ``metrics.jsonl`` rows."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def truncate_metrics(run_dir: str | Path, last_step: int, rows_at_checkpoint: int | None = None) -> int:
    """Keep the rows a checkpoint had seen: the first ``rows_at_checkpoint`` rows when known (this also
    drops a final evaluation logged after the last checkpoint), else those with ``step <= last_step``.
    The others move to ``metrics.replayed.jsonl`` (they will be re-run from the checkpoint, nothing is
    lost). Returns the number of rows moved."""
    path = Path(run_dir) / METRICS_FILE
    rows = read_metrics(run_dir)
    if rows_at_checkpoint is None:
        keep = [r for r in rows if r.get("step", 0) <= last_step]
        moved = [r for r in rows if r.get("step", 0) > last_step]
    else:
        keep, moved = rows[:rows_at_checkpoint], rows[rows_at_checkpoint:]
    if moved:
        with open(Path(run_dir) / "metrics.replayed.jsonl", "a") as f:
            for r in moved:
                f.write(_encode(r) + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(_encode(r) + "\n" for r in keep))
    os.replace(tmp, path)
    return len(moved)


PREVIOUS_METRICS_FILE = "metrics.previous.jsonl"


def set_metrics_aside(run_dir: str | Path, log=print) -> bool:
    """Before a fresh run in ``run_dir``: the ``metrics.jsonl`` of an earlier run there that wrote no
    checkpoint (a run holding one cannot be started over) is renamed to ``metrics.previous.jsonl``, so
    the new run's rows are not appended to it and nothing is lost. Returns whether there was one."""
    old = Path(run_dir) / METRICS_FILE
    if not old.is_file():
        return False
    os.replace(old, old.with_name(PREVIOUS_METRICS_FILE))
    log(f"{old} is from an earlier run that wrote no checkpoint: set aside as {PREVIOUS_METRICS_FILE}")
    return True


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` (flushed per line) and TensorBoard."""

    def __init__(self, run_dir: str | Path, *, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows = len(read_metrics(self.run_dir)) if (self.run_dir / METRICS_FILE).is_file() else 0
        """Rows in ``metrics.jsonl`` so far (saved with each checkpoint)."""
        self._file = open(self.run_dir / METRICS_FILE, "a")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self._file.write(_encode(row) + "\n")
        self._file.flush()
        self.rows += 1
        os.fsync(self._file.fileno())
        for key, value in row.items():
            value = value.item() if hasattr(value, "item") else value
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _encode(row: dict) -> str:
    """One strict-JSON line; non-finite floats spelled as in :data:`NONFINITE`."""
    return json.dumps({k: _clean(v) for k, v in row.items()}, allow_nan=False)


def _clean(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


class Progress:
    """A rich progress bar with the latest reward and accuracy (a no-op when disabled)."""

    def __init__(self, total: float, *, enabled: bool, description: str = "training", completed: float = 0):
        self._progress = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), transient=False,
        )  # fmt: skip
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, status="")

    def update(self, advance: float = 1, **fields: float) -> None:
        if self._progress is None:
            return
        status = "  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3f}" for k, v in fields.items() if v is not None)
        self._progress.update(self._task, advance=advance, status=status)

    def set_bound(self, total: float, completed: float, description: str) -> None:
        """Count another bound (steps or seconds): new total, position and description."""
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=completed, description=description)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
