"""Model preparation: load the model, and optionally warm-start it by supervised fine-tuning on the
task's worked solutions. Warm starts are cached by a hash of everything that determines them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ..models.loading import load_model_and_tokenizer
from ..tasks import load_task, problem_prompt
from .config import TrainConfig
from .sft import sft_train


def cache_root(config: TrainConfig) -> Path:
    """``warm_start.cache_dir``, else ``$SSPO_CACHE``, else ``~/.cache/sspo``."""
    root = config.warm_start.cache_dir or os.environ.get("SSPO_CACHE") or Path.home() / ".cache" / "sspo"
    return Path(root)


def warm_start_key(config: TrainConfig) -> str:
    """Hash of the model, task, template, warm-start settings and seed."""
    t, w = config.task, config.warm_start
    spec = {
        "model": config.model, "task": [t.name, t.path, t.train_split, t.train_size, t.template, t.options],
        "warm_start": [w.steps, w.batch_size, w.lr, w.schedule], "seed": config.seed, "version": 1,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sft_pairs(problems, tokenizer, template: str) -> list[tuple[str, str]]:
    """(prompt, worked solution) pairs; problems without a solution are skipped."""
    return [(problem_prompt(p, tokenizer, template=template), p.solution) for p in problems if p.solution]


def prepare_model(config: TrainConfig, *, dtype=None, device="cpu", log=print):
    """``(model, tokenizer, info)``; ``info`` says whether the warm start came from the cache."""
    if config.warm_start.steps == 0:
        model, tokenizer = load_model_and_tokenizer(config.model, dtype=dtype, device=device)
        return model, tokenizer, {"warm_start": "none"}
    path = cache_root(config) / f"warmstart-{warm_start_key(config)}"
    if (path / "warm_start.json").is_file():
        model, tokenizer = load_model_and_tokenizer(str(path), dtype=dtype, device=device)
        info = json.loads((path / "warm_start.json").read_text())
        return model, tokenizer, {**info, "warm_start": "cached", "path": str(path)}
    model, tokenizer = load_model_and_tokenizer(config.model, device=device)
    t, w = config.task, config.warm_start
    problems = load_task(t.name, t.train_split, path=t.path, limit=t.train_size, seed=config.seed, **t.options)
    pairs = sft_pairs(problems, tokenizer, t.template)
    if not pairs:
        raise ValueError(f"warm_start: task {t.name!r} has no worked solutions to fine-tune on")
    log(f"warm start: {w.steps} supervised steps on {len(pairs)} worked solutions (cached in {path})")
    start = time.perf_counter()
    result = sft_train(model, tokenizer, pairs, steps=w.steps, batch_size=w.batch_size, lr=w.lr, seed=config.seed,
                        schedule=w.schedule)
    info = {"steps": result["steps"], "loss": result["loss"], "seconds": time.perf_counter() - start}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "warm_start.json").write_text(json.dumps(info))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model, tokenizer, {**info, "warm_start": "trained", "path": str(path)}
