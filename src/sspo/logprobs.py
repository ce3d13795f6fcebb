"""Token log-probabilities and entropies without a full-vocabulary fp32 tensor.

For logits ``z`` (divided by the sampling temperature ``τ``) and label ``y``:
``logp = z_y − logsumexp(z)``, ``H = logsumexp(z) − Σ_v p_v z_v``. Rows are processed in chunks; the
backward pass recomputes each chunk's softmax, so the only ``[N, V]`` tensors are the caller's
logits and their gradient (or, from hidden states, none at all):

``∂logp/∂z_v = 1[v=y] − p_v``,  ``∂H/∂z_v = −p_v (log p_v + H)``  (then ``· 1/τ``).
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 22  # ~16 MB of fp32 per chunk temporary
# From hidden states every chunk re-reads the whole output embedding: larger chunks (~128 MB of
# logits) keep that matmul efficient.
_HIDDEN_CHUNK_ELEMENTS = 1 << 25


def _rows_per_chunk(vocab: int, chunk_size: int | None, elements: int = _CHUNK_ELEMENTS) -> int:
    return max(1, chunk_size or elements // max(vocab, 1))


def _scaled(z: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    z = z.to(dtype)
    return z / temperature if temperature != 1.0 else z


def _forward_stats(z: Tensor, labels: Tensor, with_entropy: bool):
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, labels[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logp, lse, None
    probs = torch.sub(z, lse[:, None]).exp_()
    entropy = lse - torch.linalg.vecdot(probs, z)
    return logp, lse, entropy


def _grad_z(z: Tensor, labels: Tensor, lse: Tensor, entropy, g_logp, g_ent) -> Tensor:
    """Gradient w.r.t. the temperature-scaled logits of one chunk (two chunk-sized temporaries):
    ``−p·(g_logp + g_ent·(log p + H)) + 1[v=y]·g_logp``."""
    log_q = torch.sub(z, lse[:, None])
    probs = log_q.exp()
    if g_ent is not None:
        coef = log_q.add_(entropy[:, None]).mul_(g_ent[:, None])
        if g_logp is not None:
            coef.add_(g_logp[:, None])
    else:
        coef = log_q.copy_(g_logp[:, None].expand_as(log_q))
    grad = coef.mul_(probs).neg_()
    if g_logp is not None:
        grad.scatter_add_(-1, labels[:, None], g_logp[:, None])
    return grad


def _chunked_forward(n, rows, dtype, logits_of, labels, temperature, with_entropy):
    """``(logp, lse, entropy)`` over ``n`` rows, ``logits_of(slice)`` giving one chunk's logits."""
    logp = labels.new_empty(n, dtype=dtype)
    lse = labels.new_empty(n, dtype=dtype)
    ent = labels.new_empty(n, dtype=dtype) if with_entropy else None
    for s in range(0, n, rows):
        sl = slice(s, s + rows)
        lp, ls, en = _forward_stats(_scaled(logits_of(sl), dtype, temperature), labels[sl], with_entropy)
        logp[sl], lse[sl] = lp, ls
        if with_entropy:
            ent[sl] = en
    return logp, lse, ent


def _chunk_grads(ctx, logits_of, labels, lse, ent, g_logp, g_ent):
    """Yield ``(slice, ∂/∂logits)`` chunk by chunk (softmax recomputed from ``logits_of``)."""
    g_ent = g_ent if ctx.with_entropy else None
    for s in range(0, labels.shape[0], ctx.rows):
        sl = slice(s, s + ctx.rows)
        z = _scaled(logits_of(sl), lse.dtype, ctx.temperature)
        gz = _grad_z(z, labels[sl], lse[sl], ent[sl], _slice(g_logp, sl), _slice(g_ent, sl))
        if ctx.temperature != 1.0:
            gz.div_(ctx.temperature)
        yield sl, gz


class _LogitsLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, rows, with_entropy):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logp, lse, ent = _chunked_forward(logits.shape[0], rows, dtype, logits.__getitem__, labels,
                                          temperature, with_entropy)  # fmt: skip
        ctx.save_for_backward(logits, labels, lse, ent if with_entropy else lse)
        ctx.temperature, ctx.rows, ctx.with_entropy = temperature, rows, with_entropy
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for sl, gz in _chunk_grads(ctx, logits.__getitem__, labels, lse, ent, g_logp, g_ent):
            grad[sl] = gz
        return grad, None, None, None, None


class _HiddenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, rows, with_entropy):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        logp, lse, ent = _chunked_forward(hidden.shape[0], rows, dtype, lambda sl: _project(hidden[sl], weight, bias),
                                          labels, temperature, with_entropy)  # fmt: skip
        ctx.save_for_backward(hidden, weight, bias if bias is not None else lse, labels, lse, ent if with_entropy else lse)
        ctx.has_bias, ctx.temperature, ctx.rows, ctx.with_entropy = bias is not None, temperature, rows, with_entropy
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, labels, lse, ent = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        dtype = lse.dtype
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if bias is not None else None
        logits_of = lambda sl: _project(hidden[sl], weight, bias)  # noqa: E731
        for sl, gz in _chunk_grads(ctx, logits_of, labels, lse, ent, g_logp, g_ent):
            grad_hidden[sl] = (gz.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight.addmm_(gz.T, hidden[sl].to(dtype))
            if grad_bias is not None:
                grad_bias += gz.sum(0)
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias, None, None, None, None


def _project(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    z = h @ weight.T
    return z + bias if bias is not None else z


def _slice(t: Tensor | None, sl: slice) -> Tensor | None:
    return None if t is None else t[sl]


def _check(labels: Tensor, lead: torch.Size, vocab: int, temperature: float) -> None:
    if labels.shape != lead:
        raise ValueError(f"labels must have shape {tuple(lead)}, got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if vocab < 1:
        raise ValueError("vocabulary size must be >= 1")


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``log softmax(logits/τ)[labels]`` and the entropy, for ``logits[..., V]``, ``labels[...]``.

    Labels outside ``[0, V)`` (e.g. -100 padding) are read as 0: mask those positions yourself.
    Outputs are float32 (float64 for float64 logits); ``chunk_size`` rows are processed at once.
    """
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    _check(labels, lead, vocab, temperature)
    flat = labels.reshape(-1).clamp(0, vocab - 1)
    rows = _rows_per_chunk(vocab, chunk_size)
    logp, ent = _LogitsLogprob.apply(logits.reshape(-1, vocab), flat, float(temperature), rows, with_entropy)
    return logp.view(lead), (ent.view(lead) if ent is not None else None)


def token_logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`token_logprobs` from final hidden states ``[..., H]`` and the output embedding
    ``weight[V, H]`` (plus optional ``bias[V]``): the logits exist only one chunk at a time."""
    lead, vocab = hidden.shape[:-1], weight.shape[0]
    _check(labels, lead, vocab, temperature)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    flat = labels.reshape(-1).clamp(0, vocab - 1)
    rows = _rows_per_chunk(vocab, chunk_size, _HIDDEN_CHUNK_ELEMENTS)
    h = hidden.reshape(-1, hidden.shape[-1])
    logp, ent = _HiddenLogprob.apply(h, weight, bias, flat, float(temperature), rows, with_entropy)
    return logp.view(lead), (ent.view(lead) if ent is not None else None)
