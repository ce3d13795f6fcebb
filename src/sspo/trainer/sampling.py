"""Batched sampling of responses with a KV cache, recording the behaviour policy's token log-probs.

Two back-ends share one API and one token-selection rule (:func:`select_tokens`):

- ``"hf"``: any Hugging Face causal LM, through its forward with a ``DynamicCache``, explicit
  ``position_ids`` and a 2-D attention mask for the left padding.
- ``"fast"``: Qwen2/Llama-style models through :class:`sspo.models.fast_decoder.FastDecoder`, a pure
  torch forward with a static KV cache and a few ops per layer. It also prefills each distinct prompt
  once (a GRPO group of G samples shares one prefill) and drops finished rows from the batch.

``backend="auto"`` picks ``"fast"`` whenever the model supports it. Both back-ends draw the same
random numbers, so a seeded generator gives the same tokens on either (up to float ties).

On a small shared CPU, set ``torch.set_num_threads(1)`` for tiny models: intra-op threads that
compete with other processes slow every op several-fold, which dwarfs any per-call overhead.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sspo.models.fast_decoder import FastDecoder, unsupported_reason

BACKENDS = ("auto", "fast", "hf")


@dataclass
class Rollout:
    """Prompts and sampled responses of one batch, as tensors on the model's device.

    ``P`` is the longest prompt (shorter ones are left-padded) and ``R`` the number of decode steps
    actually run (the longest response, at most ``max_new_tokens``; shorter ones are right-padded).
    """

    input_ids: Tensor
    """``[N, P + R]`` long: left-padded prompt followed by the right-padded response."""
    attention_mask: Tensor
    """``[N, P + R]`` long: 1 on prompt tokens and on response tokens kept by ``response_mask``."""
    response_ids: Tensor
    """``[N, R]`` long: sampled tokens, ``pad_token_id`` after a row's EOS."""
    response_mask: Tensor
    """``[N, R]`` bool: True for generated tokens up to and including the EOS token."""
    old_log_probs: Tensor | None
    """``[N, R]`` float32: ``log_softmax(logits / temperature)`` at the sampled token, 0 where masked.
    ``None`` when sampled with ``return_logprobs=False``."""
    prompt_lengths: Tensor
    """``[N]`` long: number of real (non-pad) prompt tokens."""
    response_lengths: Tensor
    """``[N]`` long: number of response tokens, including the EOS token if one was produced."""

    @property
    def prompt_width(self) -> int:
        """``P``: the common (padded) prompt length; responses start at this column."""
        return self.input_ids.shape[1] - self.response_ids.shape[1]

    @property
    def position_ids(self) -> Tensor:
        """``[N, P + R]`` positions used while sampling (0 at each row's first real token)."""
        return position_ids_from_mask(self.attention_mask)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions for a left-padded batch: ``cumsum(mask) - 1`` clamped at 0 (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to ``[N, P]``; return ``(input_ids, attention_mask)``."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        if len(ids):
            input_ids[row, width - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Zero the tail of ``probs [N, V]`` outside the nucleus (not renormalised).

    The nucleus is the smallest set of most-probable tokens whose total probability reaches
    ``top_p`` (the most probable token is always kept; ties are broken by sort order).
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def draw_noise(shape, generator: torch.Generator | None, device) -> Tensor:
    """``Exp(1)`` draws of ``shape`` from ``generator`` (on the generator's device), moved to ``device``."""
    noise_device = generator.device if generator is not None else device
    return torch.empty(shape, device=noise_device).exponential_(generator=generator).to(device)


def select_tokens(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    return_logprobs: bool = True,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Choose one token per row of ``logits [N, V]``; return ``(tokens [N], log_probs [N] | None)``.

    Sampling draws from ``softmax(logits / temperature)`` restricted to the top-p nucleus, using the
    exponential race ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)`` from ``generator`` (one draw per
    vocabulary entry per row, so the random stream does not depend on the probabilities); ``noise``
    may supply those draws (``[N, V]``, see :func:`draw_noise`). ``greedy`` takes ``argmax(logits)``.
    The returned log-prob is always ``log_softmax(logits / temperature)`` at the chosen token: top-p
    does not change it.
    """
    logits = logits.float()
    scaled = logits if temperature == 1.0 else logits / temperature
    log_probs = torch.log_softmax(scaled, dim=-1) if return_logprobs or not greedy else None
    if greedy:
        tokens = logits.argmax(dim=-1)
    else:
        probs = top_p_filter(log_probs.exp(), top_p)
        if noise is None:
            noise = draw_noise(probs.shape, generator, probs.device)
        tokens = (probs / noise).argmax(dim=-1)
    if not return_logprobs:
        return tokens, None
    return tokens, log_probs.gather(-1, tokens[:, None])[:, 0]


def _check_args(prompt_ids, max_new_tokens, temperature, top_p, pad_token_id, backend) -> None:
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one prompt")
    for row, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt_ids[{row}] is empty; every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if pad_token_id is None:
        raise ValueError("pad_token_id is required (it fills left padding and finished rows)")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class _HFStepper:
    """Generic back-end: the model's own forward with a ``DynamicCache``."""

    def __init__(self, model: nn.Module, batch_size: int, max_length: int, device):
        from transformers import DynamicCache

        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.pass_positions = "position_ids" in params
        self.keep_kwarg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        try:
            self.cache = DynamicCache(config=model.config)
        except TypeError:  # older transformers
            self.cache = DynamicCache()
        self.mask = torch.ones(batch_size, max_length, dtype=torch.long, device=device)
        self.length = 0
        self.positions = None

    def _forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        kwargs = {self.cache_kwarg: self.cache, "use_cache": True,
                  "attention_mask": self.mask[:, : self.length]}
        if self.pass_positions:
            kwargs["position_ids"] = position_ids
        if self.keep_kwarg is not None:
            kwargs[self.keep_kwarg] = 1
        return self.model(input_ids=input_ids, **kwargs).logits[:, -1]

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        p = input_ids.shape[1]
        self.mask[:, :p] = attention_mask
        self.length = p
        positions = position_ids_from_mask(attention_mask)
        self.positions = positions[:, -1] + 1
        return self._forward(input_ids, positions)

    def step(self, tokens: Tensor) -> Tensor:
        self.length += 1
        logits = self._forward(tokens[:, None], self.positions[:, None])
        self.positions = self.positions + 1
        return logits


def resolve_backend(model: nn.Module, backend: str = "auto", max_length: int | None = None) -> str:
    """Return ``"fast"`` or ``"hf"``; ``"fast"`` on an unsupported model raises ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "hf":
        return "hf"
    reason = unsupported_reason(model, max_length)
    if reason is None:
        return "fast"
    if backend == "fast":
        raise ValueError(f"backend='fast' cannot run this model: {reason}; use backend='hf' or 'auto'")
    return "hf"


def sample(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    return_logprobs: bool = True,
    greedy: bool = False,
    backend: str = "auto",
) -> Rollout:
    """Sample one response per prompt (repeat prompts for groups) and return a :class:`Rollout`.

    Decoding runs until every row has produced an EOS (any of ``eos_token_id``; ``None`` never stops)
    or ``max_new_tokens`` steps; finished rows receive ``pad_token_id``. ``old_log_probs`` holds
    ``log_softmax(logits / temperature)`` of each sampled token under the *sampling* distribution's
    temperature; top-p filtering does not change the recorded value. With ``greedy=True`` tokens are
    ``argmax(logits)`` and the log-probs are still taken at ``temperature``. Runs under
    ``torch.inference_mode()`` in eval semantics (no dropout); the returned tensors are ordinary
    tensors, usable in autograd. The same ``generator`` seed gives the same rollout on either back-end
    up to floating-point ties (their logits agree to ~1e-6 in float32).
    """
    _check_args(prompt_ids, max_new_tokens, temperature, top_p, pad_token_id, backend)
    eos_ids = () if eos_token_id is None else (
        (int(eos_token_id),) if isinstance(eos_token_id, int) else tuple(int(t) for t in eos_token_id))
    device = next(model.parameters()).device
    input_ids, prompt_mask = left_pad(prompt_ids, pad_token_id, device)
    n, p = input_ids.shape
    max_length = p + max_new_tokens
    name = resolve_backend(model, backend, max_length)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if name == "fast":
                stepper = FastDecoder(model, n, max_length)
                first, rows = _unique_rows(prompt_ids, device)
                logits = stepper.prefill(input_ids[first], prompt_mask[first], rows=rows)
            else:
                stepper = _HFStepper(model, n, max_length, device)
                logits = stepper.prefill(input_ids, prompt_mask)
            tokens_out, logps_out, alive_out = _decode(
                stepper, logits, n, max_new_tokens, eos_ids, pad_token_id, device,
                dict(temperature=temperature, top_p=top_p, greedy=greedy, return_logprobs=return_logprobs),
                generator,
            )
    finally:
        model.train(was_training)
    # Clone outside inference mode so callers may use the tensors in autograd.
    response_ids, response_mask = tokens_out.clone(), alive_out.clone()
    old_log_probs = logps_out.clone() if return_logprobs else None
    return Rollout(
        input_ids=torch.cat([input_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
        response_ids=response_ids,
        response_mask=response_mask,
        old_log_probs=old_log_probs,
        prompt_lengths=prompt_mask.sum(1),
        response_lengths=response_mask.sum(1),
    )


def _unique_rows(prompt_ids: Sequence[Sequence[int]], device) -> tuple[Tensor, Tensor]:
    """``(first, rows)``: index of each distinct prompt's first row, and each row's distinct prompt."""
    seen: dict[tuple[int, ...], int] = {}
    first, rows = [], []
    for row, ids in enumerate(prompt_ids):
        key = tuple(ids)
        if key not in seen:
            seen[key] = len(first)
            first.append(row)
        rows.append(seen[key])
    return torch.tensor(first, device=device), torch.tensor(rows, device=device)


# Drop finished rows from the decoder once at most this fraction of its rows is still running.
COMPACT_FRACTION = 0.75


def _decode(stepper, logits, n, max_new_tokens, eos_ids, pad_token_id, device, select_kwargs, generator):
    """The decode loop shared by both back-ends; returns ``(tokens, log_probs, alive)``, each ``[N, R]``.

    ``logits`` are the prefill's next-token logits. Random draws are made for all ``N`` rows at every
    step whatever the rows' state, so a seed gives the same tokens on either back-end. When the stepper
    can drop rows (``select_rows``), finished rows are removed once few enough remain.
    """
    tokens_out = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps_out = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    alive_out = torch.zeros((n, max_new_tokens), dtype=torch.bool, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device) if eos_ids else None
    vocab = logits.shape[-1]
    can_compact = hasattr(stepper, "select_rows")
    active = None  # full-batch indices of the rows the stepper holds; None = all rows
    steps = 0
    for t in range(max_new_tokens):
        noise = None if select_kwargs["greedy"] else draw_noise((n, vocab), generator, device)
        if active is None:
            tokens, logps = select_tokens(logits, noise=noise, **select_kwargs)
        else:
            chosen, chosen_logps = select_tokens(logits, noise=noise[active] if noise is not None else None,
                                                 **select_kwargs)
            tokens = torch.full((n,), pad_token_id, dtype=torch.long, device=device).index_copy_(0, active, chosen)
            logps = None
            if chosen_logps is not None:
                logps = torch.zeros(n, dtype=chosen_logps.dtype, device=device).index_copy_(0, active, chosen_logps)
        tokens = tokens.masked_fill(done, pad_token_id)
        tokens_out[:, t] = tokens
        if logps is not None:
            logps_out[:, t] = logps.masked_fill(done, 0.0)
        alive_out[:, t] = ~done
        steps = t + 1
        if t + 1 == max_new_tokens:
            break
        if eos is not None:
            done |= (tokens == eos[0]) if len(eos_ids) == 1 else torch.isin(tokens, eos)
            running = int((~done).sum())
            if running == 0:
                break
            held = n if active is None else int(active.shape[0])
            if can_compact and running <= COMPACT_FRACTION * held:
                keep_full = (~done).nonzero()[:, 0]
                keep_local = keep_full if active is None else (~done[active]).nonzero()[:, 0]
                stepper.select_rows(keep_local)
                active = keep_full
        logits = stepper.step(tokens if active is None else tokens[active])
    return tokens_out[:, :steps], logps_out[:, :steps], alive_out[:, :steps]
