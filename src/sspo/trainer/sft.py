"""Supervised warm start: next-token cross-entropy on completion tokens of (prompt, completion) pairs.

For a pair the sequence is ``prompt_ids + completion_ids + [eos]`` (prompt and completion tokenised
separately, as the sampler sees them). The loss is the token mean over the batch of
``-log p(y_t | y_<t)`` for completion and EOS tokens only; prompt and padding tokens are masked out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import SFT_SCHEDULES

logger = logging.getLogger(__name__)

SCHEDULES = SFT_SCHEDULES
IGNORE_INDEX = -100


def lr_factor(step: int, *, steps: int, warmup: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup`` for the first ``warmup`` steps, then a decay from 1 to
    ``min_lr_ratio`` over the remaining steps: cosine ``r + (1 - r) (1 + cos(pi u)) / 2`` or linear
    ``1 - (1 - r) u`` with ``u`` the fraction of decay steps done; ``constant`` stays at 1.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    u = min(1.0, (step - warmup) / max(1, steps - warmup - 1))
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * u))
    return 1.0 - (1 - min_lr_ratio) * u


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int | None = None):
    """Tokenise pairs into ``(ids, num_prompt_tokens)``; EOS is appended to every completion.

    Sequences longer than ``max_length`` are cut at the right end (their EOS is then lost).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; SFT appends EOS to every completion")
    encoded = []
    for index, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise ValueError(f"pairs[{index}] must be a (prompt, completion) tuple of str, got {pair!r}")
        prompt = tokenizer(pair[0], add_special_tokens=False)["input_ids"]
        completion = tokenizer(pair[1], add_special_tokens=False)["input_ids"] + [eos]
        ids = (prompt + completion)[:max_length] if max_length else prompt + completion
        if len(ids) <= len(prompt):
            raise ValueError(f"pairs[{index}] has no completion token within max_length={max_length}")
        encoded.append((ids, len(prompt)))
    return encoded


def collate(encoded, indices, pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the chosen sequences; labels are -100 on prompt and padding tokens."""
    width = max(len(encoded[i][0]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(indices):
        ids, num_prompt = encoded[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, num_prompt : len(ids)] = torch.tensor(ids[num_prompt:])
    return input_ids.to(device), labels.to(device)


def _check(steps, batch_size, lr, warmup, schedule, min_lr_ratio, time_budget_s, log_every, pairs) -> None:
    if not pairs:
        raise ValueError("pairs is empty")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0 or None, got {time_budget_s}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")


def sft_train(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int | None = None,
    seed: int = 0,
    time_budget_s: float | None = None,
    log_every: int = 50,
    callback: Callable[[dict], bool | None] | None = None,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    max_length: int | None = None,
) -> dict:
    """Train ``model`` in place on completion tokens of ``pairs``; return final metrics.

    AdamW (betas 0.9/0.95) with ``warmup`` linear warm-up steps (default ``min(100, steps // 10)``)
    then ``schedule`` decay to ``min_lr_ratio * lr`` over ``steps``. Batches of ``batch_size`` pairs
    are drawn from seeded shuffles of the data (epoch by epoch), so on CPU the run is deterministic
    given ``seed``. Training stops after ``steps``, when ``time_budget_s`` seconds have elapsed
    (checked after each step; the schedule still spans ``steps``), or when ``callback`` returns True.

    Every ``log_every`` steps (and at the end) the metrics dict ``{step, loss, lr, seconds,
    tokens_per_s}`` is logged and passed to ``callback``; ``loss`` is the mean over those steps.
    Returns ``{loss, last_loss, initial_loss, steps, seconds, tokens, stopped}`` where ``stopped`` is
    ``"steps"``, ``"time_budget"`` or ``"callback"``.
    """
    warmup = min(100, steps // 10) if warmup is None else warmup
    _check(steps, batch_size, lr, warmup, schedule, min_lr_ratio, time_budget_s, log_every, pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = encode_pairs(tokenizer, pairs, max_length)
    device = next(model.parameters()).device
    data_rng = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)

    def factor(step: int) -> float:
        return lr_factor(step, steps=steps, warmup=warmup, schedule=schedule, min_lr_ratio=min_lr_ratio)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    was_training = model.training
    model.train()
    order: list[int] = []
    start = time.perf_counter()
    window_loss, window_steps, tokens = torch.zeros((), device=device), 0, 0
    initial_loss, step, stopped, last, log = None, 0, "steps", None, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # any dropout in the model
        while step < steps:
            if len(order) < batch_size:
                order += torch.randperm(len(encoded), generator=data_rng).tolist()
                while len(order) < batch_size:  # fewer pairs than a batch: repeat epochs
                    order += torch.randperm(len(encoded), generator=data_rng).tolist()
            indices, order = order[:batch_size], order[batch_size:]
            input_ids, labels = collate(encoded, indices, pad, device)
            # Right padding never influences earlier positions under causal attention, so no mask.
            logits = model(input_ids=input_ids).logits[:, :-1]
            targets = labels[:, 1:]
            num_targets = (targets != IGNORE_INDEX).sum()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum") / num_targets.clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            current_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += int(input_ids.numel())
            last = loss.detach()
            window_loss += last
            window_steps += 1
            if initial_loss is None:
                initial_loss = float(last)
            seconds = time.perf_counter() - start
            if time_budget_s is not None and seconds >= time_budget_s and step < steps:
                stopped = "time_budget"
            if step % log_every == 0 or step == steps or stopped != "steps":
                log = {"step": step, "loss": float(window_loss) / window_steps, "lr": current_lr,
                       "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)}
                window_loss, window_steps = torch.zeros((), device=device), 0
                logger.info("sft step %d loss %.4f lr %.2e (%.1fs)", step, log["loss"], current_lr, seconds)
                if callback is not None and callback(dict(log)) and step < steps:
                    stopped = "callback"
            if stopped != "steps":
                break
    optimizer.zero_grad(set_to_none=True)  # no gradient of the last step stays on the model for its next user
    model.train(was_training)
    return {"loss": log["loss"], "last_loss": float(last), "initial_loss": initial_loss, "steps": step,
            "seconds": time.perf_counter() - start, "tokens": tokens, "stopped": stopped}
