"""Log-probabilities of response tokens under a causal LM, without full-vocabulary logits.

The decoder's final hidden states at positions ``P−1 … P+R−2`` predict the response tokens at
``P … P+R−1``; :func:`sspo.token_logprobs_from_hidden` turns them into log-probs and entropies one
chunk of rows at a time.

With ``groups`` (rows with the same id share one prompt, as the G samples of a GRPO group do), each
distinct prompt runs through the decoder once; its key/value cache is copied to the rows of its group
(``index_select``, so gradients from every row flow back into the one prompt pass) and only the
response tokens run per row. For G samples per prompt this removes most of the prompt compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache

from ..logprobs import token_logprobs_from_hidden
from ..models.fast_decoder import LayerWeights, apply_rope, fusable, rms_norm, rope_tables, unsupported_reason


def lean_forward_ok(model: nn.Module) -> bool:
    """Whether :func:`_lean_hidden_states` serves ``model``: a Qwen2/Llama model the lean decoder
    supports, small enough (≤ 256 MiB) that concatenating its projection weights per forward is cheap,
    in eval mode (no dropout) and not configured otherwise (``model.sspo_lean_forward = False``)."""
    if not getattr(model, "sspo_lean_forward", True) or model.training:
        return False
    return fusable(model) and unsupported_reason(model) is None


def position_ids(attention_mask: Tensor) -> Tensor:
    """0 at each row's first real token (prompts are left-padded)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _group_index(groups: Tensor) -> tuple[Tensor, Tensor]:
    """``(first, inverse)``: the first row of each distinct group, and each row's group position."""
    unique, inverse = torch.unique(groups, return_inverse=True)
    first = torch.full((len(unique),), len(groups), dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(groups), device=groups.device), "amin")
    return first, inverse


def _lean_hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, width: int,
                        groups: Tensor | None) -> Tensor:  # fmt: skip
    """:func:`_hidden_states` for small Qwen2/Llama models in a few torch ops per layer.

    The maths of :mod:`sspo.models.fast_decoder` (fused q/k/v and gate/up projections, whose
    concatenated weights stay in the autograd graph), with autograd: one pass over each distinct
    prompt (causal, left padding masked), then one over every row's response tokens attending to
    its prompt's keys/values and causally to its own tokens. No cache objects, masks built once.
    """
    base = model.model
    n, total = input_ids.shape
    start = total - width
    first, inverse = _group_index(groups) if groups is not None else (torch.arange(n, device=input_ids.device),) * 2
    positions = position_ids(attention_mask)
    valid = attention_mask[first, :start].bool()
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = config.num_key_value_heads

    def tables(pos: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = rope_tables(base.rotary_emb, head_dim, pos, base.embed_tokens.weight.dtype)
        return cos[:, :, None], sin[:, :, None]

    def qkv(layer: LayerWeights, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        out = F.linear(rms_norm(x, layer.norm1, layer.eps), layer.qkv_w, layer.qkv_b).view(b, t, heads + 2 * kv, -1)
        qk = apply_rope(out[:, :, : heads + kv], cos, sin)
        return (qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2),
                out[:, :, heads + kv :].transpose(1, 2))  # fmt: skip

    def block(layer: LayerWeights, x: Tensor, attended: Tensor) -> Tensor:
        x = x + F.linear(attended.transpose(1, 2).reshape(*x.shape[:2], -1), layer.o_w, layer.o_b)
        return x + layer.mlp(rms_norm(x, layer.norm2, layer.eps))

    p_cos, p_sin = tables(positions[first, :start])
    eye = torch.eye(start, dtype=torch.bool, device=input_ids.device)
    prompt_mask = ((eye.cumsum(0).bool() & valid[:, None, :]) | eye)[:, None]  # causal, padding masked
    r = width - 1
    # Response tokens run packed (padding dropped) through the per-token layers; only attention
    # sees the [N, r] layout. Padding positions stay zero and are never attended to.
    real = attention_mask[:, start:-1].bool()
    tokens = real.nonzero(as_tuple=True)
    response_mask = torch.cat([valid[inverse][:, None, :].expand(n, r, start),
                               torch.ones(r, r, dtype=torch.bool, device=input_ids.device).tril() & real[:, None, :]],
                              dim=-1)[:, None]  # fmt: skip
    r_cos, r_sin = (t[tokens] for t in tables(positions[:, start:-1]))
    embed = base.embed_tokens.weight
    xp, xr = F.embedding(input_ids[first, :start], embed), F.embedding(input_ids[:, start:-1][tokens], embed)
    for module in base.layers:
        layer = LayerWeights(module, head_dim**-0.5, fuse=True)
        q, k, v = qkv(layer, xp, p_cos, p_sin)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=prompt_mask, scale=1.0, enable_gqa=heads != kv)
        if r:
            packed = torch.cat(qkv(layer, xr[None], r_cos[None], r_sin[None]), dim=1)[0].transpose(0, 1)
            dense = packed.new_zeros(n, r, *packed.shape[1:]).index_put(tokens, packed).transpose(1, 2)
            qr, kr, vr = dense.split([heads, kv, kv], dim=1)
            keys, values = torch.cat([k[inverse], kr], dim=2), torch.cat([v[inverse], vr], dim=2)
            out = F.scaled_dot_product_attention(qr, keys, values, attn_mask=response_mask, scale=1.0,
                                                 enable_gqa=heads != kv)  # fmt: skip
            xr = block(layer, xr[None], out.transpose(1, 2)[tokens].transpose(0, 1)[None])[0]
        xp = block(layer, xp, attended)
    xr = xr.new_zeros(n, r, xr.shape[-1]).index_put(tokens, xr)
    hidden = torch.cat([xp[inverse, -1:], xr], dim=1)
    return rms_norm(hidden, base.norm.weight, getattr(base.norm, "variance_epsilon", getattr(base.norm, "eps", 1e-6)))


def _hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, width: int, groups: Tensor | None):
    """Final hidden states ``[N, width, H]`` that predict the last ``width`` tokens of ``input_ids``."""
    if lean_forward_ok(model):
        return _lean_hidden_states(model, input_ids, attention_mask, width, groups)
    decoder = model.get_decoder()
    positions = position_ids(attention_mask)
    start = input_ids.shape[1] - width
    if groups is None:
        return decoder(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                       position_ids=positions[:, :-1], use_cache=False).last_hidden_state[:, start - 1 :]  # fmt: skip
    first, inverse = _group_index(groups)
    cache = DynamicCache(config=model.config)
    prompt = decoder(input_ids=input_ids[first, :start], attention_mask=attention_mask[first, :start],
                     position_ids=positions[first, :start], past_key_values=cache, use_cache=True)  # fmt: skip
    last_prompt_hidden = prompt.last_hidden_state[inverse, -1:]
    if width == 1:
        return last_prompt_hidden
    cache.reorder_cache(inverse)
    response = decoder(input_ids=input_ids[:, start:-1], attention_mask=attention_mask[:, :-1],
                       position_ids=positions[:, start:-1], past_key_values=cache, use_cache=True)  # fmt: skip
    return torch.cat([last_prompt_hidden, response.last_hidden_state], dim=1)


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_ids: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    groups: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``log π(y_t | x, y_<t)`` at temperature ``τ`` for ``response_ids [N, R]`` (the last ``R``
    columns of ``input_ids [N, P+R]``), and the token entropies. Gradients flow to the model.
    ``groups [N]``: rows with equal ids have identical prompt columns (computed once)."""
    hidden = _hidden_states(model, input_ids, attention_mask, response_ids.shape[1], groups)
    head = model.get_output_embeddings()
    return token_logprobs_from_hidden(
        hidden, head.weight, response_ids, bias=getattr(head, "bias", None),
        temperature=temperature, with_entropy=with_entropy,
    )  # fmt: skip


@torch.no_grad()
def response_logprobs_no_grad(model: nn.Module, input_ids, attention_mask, response_ids, *, temperature,
                              groups=None, batch_size=64):  # fmt: skip
    """:func:`response_logprobs` without gradients, in batches (behaviour / reference policies)."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            response_logprobs(model, input_ids[i : i + batch_size], attention_mask[i : i + batch_size],
                              response_ids[i : i + batch_size], temperature=temperature, with_entropy=False,
                              groups=None if groups is None else groups[i : i + batch_size])[0]
            for i in range(0, input_ids.shape[0], batch_size)
        ]  # fmt: skip
    finally:
        model.train(was_training)
    return torch.cat(parts)
