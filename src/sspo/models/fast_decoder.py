"""A lean pure-torch decoder for Qwen2/Llama-style Hugging Face models, with a static KV cache.

The ``transformers`` forward costs tens of milliseconds of Python per call on CPU, which dominates
decoding for ~1M-parameter models. :class:`FastDecoder` reads the weights of an HF
``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` (no copy except fused projections) and runs the same
maths with a handful of torch ops per layer:

    h = x + o_proj(attn(rope(q), rope(k), v))     with q, k, v = qkv_proj(rms_norm(x))
    y = h + down_proj(silu(gate_proj(n)) * up_proj(n))   with n = rms_norm(h)
    logits = lm_head(rms_norm(y_last))

Attention is grouped-query (query head ``j`` reads key/value head ``j // (heads / kv_heads)``, as HF's
``repeat_kv``), RoPE uses the model's own inverse frequencies (hence ``rope_theta`` and static scaling
variants), and left padding is handled with explicit per-row positions and a key mask. Keys and values
live in a cache preallocated for ``batch_size x max_length``; no dropout is applied (eval semantics).

When rows share prompts (the G samples of a GRPO group), each prompt's keys and values are kept once
and the cache holds only the responses: a decode step attends to a prompt with one matrix product for
all of its rows (laid out ``[prompts, rows per prompt]``), reading the prompt once instead of G times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
_UNSUPPORTED_ROPE_TYPES = ("dynamic", "longrope")
# Fuse q/k/v and gate/up weights into one matrix only while the copies are cheap.
FUSE_MAX_BYTES = 256 * 2**20


def unsupported_reason(model: nn.Module, max_length: int | None = None) -> str | None:
    """Return why ``model`` cannot use :class:`FastDecoder`, or ``None`` when it can."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not 'silu'"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1 is not supported"
    if getattr(model, "hf_quantizer", None) is not None:
        return "quantized models are not supported"
    base = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or not all(hasattr(base, name) for name in needed):
        return "model.model lacks embed_tokens/layers/norm/rotary_emb"
    lm_head = model.get_output_embeddings()
    if type(lm_head) is not nn.Linear or lm_head.bias is not None:
        return "lm_head is not a plain bias-free nn.Linear"
    for layer in base.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for module in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
                       mlp.down_proj):
            if type(module) is not nn.Linear:
                return f"{type(module).__name__} projection (adapters/quantisation) is not supported"
    rope_type = getattr(base.rotary_emb, "rope_type", "default")
    if rope_type.startswith(_UNSUPPORTED_ROPE_TYPES):
        return f"rope_type {rope_type!r} depends on sequence length"
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types and window is not None:
        if max_length is None or max_length > window:
            return f"sliding-window attention (window {window}) shorter than the sequence"
    return None


def fusable(model: nn.Module) -> bool:
    """Whether ``model``'s weights are small enough (≤ ``FUSE_MAX_BYTES``) to copy into fused matrices."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) <= FUSE_MAX_BYTES


def rope_tables(rotary: nn.Module, head_dim: int, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of shape ``positions.shape + (head_dim,)`` from the model's own inverse frequencies
    and attention scaling, with the sign of ``rotate_half`` folded into ``sin`` (see :func:`apply_rope`)."""
    inv_freq = rotary.inv_freq.to(device=positions.device, dtype=torch.float32)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    sign = torch.ones(head_dim, device=positions.device)
    sign[: head_dim // 2] = -1.0
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale * sign).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x * cos + rotate_half(x) * sin``; ``rotate_half(x) = cat(-x2, x1)`` = roll(x) with signed sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)``, normalising in at least float32 (HF's RMSNorm uses
    exactly float32, also for float64 inputs; here float64 stays float64)."""
    if x.dtype in (torch.float32, torch.float64):
        return F.rms_norm(x, x.shape[-1:], weight, eps)
    return weight * F.rms_norm(x.float(), x.shape[-1:], None, eps).to(x.dtype)


class LayerWeights:
    """Weights of one decoder layer, as plain tensors (fused when cheap)."""

    def __init__(self, layer: nn.Module, scaling: float, fuse: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1 = layer.input_layernorm.weight
        self.norm2 = layer.post_attention_layernorm.weight
        self.eps = getattr(layer.input_layernorm, "variance_epsilon", getattr(layer.input_layernorm, "eps", 1e-6))
        # The softmax scale 1/sqrt(d) is folded into the query projection (RoPE is linear).
        q_w, q_b = attn.q_proj.weight * scaling, attn.q_proj.bias
        q_b = None if q_b is None else q_b * scaling
        weights = [q_w, attn.k_proj.weight, attn.v_proj.weight]
        biases = [q_b, attn.k_proj.bias, attn.v_proj.bias]
        if any(b is not None for b in biases):
            biases = [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)]
            self.qkv_b = torch.cat(biases)
        else:
            self.qkv_b = None
        self.qkv_w = torch.cat(weights)
        self.o_w, self.o_b = attn.o_proj.weight, attn.o_proj.bias
        self.fused_mlp = fuse and mlp.gate_proj.bias is None and mlp.up_proj.bias is None
        if self.fused_mlp:
            self.gate_up_w = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        else:
            self.gate, self.up = mlp.gate_proj, mlp.up_proj
        self.down_w, self.down_b = mlp.down_proj.weight, mlp.down_proj.bias

    def mlp(self, x: Tensor) -> Tensor:
        if self.fused_mlp:
            gate, up = F.linear(x, self.gate_up_w).chunk(2, dim=-1)
        else:
            gate, up = self.gate(x), self.up(x)
        return F.linear(F.silu(gate) * up, self.down_w, self.down_b)


class FastDecoder:
    """Prefill and single-token decode for a fixed batch, reusing one static KV cache.

    Usage: ``logits = dec.prefill(ids, mask)`` for left-padded prompts ``[N, P]``, then repeatedly
    ``logits = dec.step(tokens)`` with the ``[N]`` tokens just chosen. Must be called under
    ``torch.inference_mode()`` (or ``no_grad``); it never builds autograd graphs.
    """

    def __init__(self, model: nn.Module, batch_size: int, max_length: int):
        reason = unsupported_reason(model, max_length)
        if reason is not None:
            raise ValueError(f"FastDecoder cannot run this model: {reason}")
        config, base = model.config, model.model
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.group = self.num_heads // self.num_kv_heads
        self.batch_size, self.max_length = batch_size, max_length
        param = base.embed_tokens.weight
        self.device, self.dtype = param.device, param.dtype
        fuse = fusable(model)
        with torch.no_grad():
            self.embed = base.embed_tokens.weight
            self.layers = [LayerWeights(layer, self.head_dim**-0.5, fuse) for layer in base.layers]
            self.final_norm = base.norm.weight
            self.final_eps = getattr(base.norm, "variance_epsilon", getattr(base.norm, "eps", 1e-6))
            self.lm_head = model.get_output_embeddings().weight
            positions = torch.arange(max_length, device=self.device)
            self.cos, self.sin = rope_tables(base.rotary_emb, self.head_dim, positions, self.dtype)
        shape = (len(self.layers), batch_size, self.num_kv_heads, max_length, self.head_dim)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        # Additive key mask over cache slots: -inf on left padding, 0 elsewhere.
        self.key_mask = torch.zeros(batch_size, 1, 1, max_length, device=self.device, dtype=self.dtype)
        self.length = 0
        self.shared = False
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def _qkv(self, layer: LayerWeights, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project ``x [N, T, H]`` to rotated ``q [N, T, heads, d]``, ``k [N, T, kv, d]`` and ``v``."""
        n, t, _ = x.shape
        qkv = F.linear(rms_norm(x, layer.norm1, layer.eps), layer.qkv_w, layer.qkv_b)
        qkv = qkv.view(n, t, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        qk = apply_rope(qkv[:, :, : self.num_heads + self.num_kv_heads], cos, sin)
        return qk[:, :, : self.num_heads], qk[:, :, self.num_heads :], qkv[:, :, self.num_heads + self.num_kv_heads :]

    def _head(self, hidden: Tensor) -> Tensor:
        return F.linear(rms_norm(hidden, self.final_norm, self.final_eps), self.lm_head)

    def prefill(self, input_ids: Tensor, attention_mask: Tensor, rows: Tensor | None = None,
                all_logits: bool = False) -> Tensor:
        """Run left-padded prompts ``[U, P]``; return last-position logits ``[N, V]`` (or ``[N, P, V]``).

        ``rows [N]`` maps each batch row to its prompt in ``input_ids`` (default: the identity, U = N),
        so a prompt repeated G times in a GRPO group is run once and its keys/values copied G times.
        """
        u, p = input_ids.shape
        rows = torch.arange(u, device=self.device) if rows is None else rows.to(self.device)
        if rows.shape[0] != self.batch_size or p > self.max_length:
            raise ValueError(f"prefill got {rows.shape[0]} rows of {p} tokens, decoder holds "
                             f"{self.batch_size} x {self.max_length}")
        valid = attention_mask.to(torch.bool)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]
        # Shared prompts (u < N rows): keys/values kept once per prompt, the cache holds responses only.
        self.shared = u < rows.shape[0]
        if self.shared:
            shape = (len(self.layers), u, self.num_kv_heads, p, self.head_dim)
            self.prompt_k = torch.empty(shape, device=self.device, dtype=self.dtype)
            self.prompt_v = torch.empty(shape, device=self.device, dtype=self.dtype)
            self.prompt_mask = torch.zeros(u, 1, 1, p, device=self.device, dtype=self.dtype)
            self.prompt_mask[:, 0, 0].masked_fill_(~valid, float("-inf"))
            self._set_rows(rows)
            cache = (len(self.layers), rows.shape[0], self.num_kv_heads, self.max_length - p, self.head_dim)
            self.k_cache = torch.zeros(cache, device=self.device, dtype=self.dtype)
            self.v_cache = torch.zeros(cache, device=self.device, dtype=self.dtype)
        self.key_mask.zero_()
        self.key_mask[:, 0, 0, :p].masked_fill_(~valid[rows], float("-inf"))
        causal = torch.ones(p, p, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(p, dtype=torch.bool, device=self.device)
        # A padding query attends to itself only, so no softmax row is empty (no NaN).
        allowed = (causal & valid[:, None, None, :]) | eye
        x = F.embedding(input_ids, self.embed)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            if self.shared:
                self.prompt_k[index], self.prompt_v[index] = k, v
            else:
                self.k_cache[index, :, :, :p] = k[rows]
                self.v_cache[index, :, :, :p] = v[rows]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=allowed, scale=1.0,
                                                 enable_gqa=self.group > 1)
            x = x + F.linear(out.transpose(1, 2).reshape(u, p, -1), layer.o_w, layer.o_b)
            x = x + layer.mlp(rms_norm(x, layer.norm2, layer.eps))
        self.length = p
        self.positions = positions[rows, -1] + 1
        return self._head(x if all_logits else x[:, -1])[rows]

    def _set_rows(self, rows: Tensor) -> None:
        """Each row's prompt and its slot among its prompt's rows: the padded ``[U, slots]`` layout in
        which the rows of one prompt attend to its keys with one matrix product."""
        self.rows = rows
        order = torch.argsort(rows, stable=True)
        counts = torch.bincount(rows, minlength=self.prompt_k.shape[1])
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(len(rows), device=rows.device) - starts[rows[order]]
        self.slot = slot
        self.slots = int(counts.max())
        # rows in prompt order, the same number per prompt: the padded layout is a view of the rows
        self.uniform = bool((counts == self.slots).all()) and bool((order == torch.arange(len(rows))).all())

    def select_rows(self, index: Tensor) -> None:
        """Keep only batch rows ``index`` (e.g. the unfinished ones), shrinking all later work."""
        self.k_cache = self.k_cache[:, index]
        self.v_cache = self.v_cache[:, index]
        self.key_mask = self.key_mask[index]
        self.positions = self.positions[index]
        self.batch_size = int(index.shape[0])
        if self.shared:
            self._set_rows(self.rows[index])

    def _prompt_scores(self, q: Tensor, index: int) -> Tensor:
        """``q [N, kv, g, d]`` against each row's shared prompt keys: scores ``[N, kv, g, P]``."""
        u, kv, g, d = self.prompt_k.shape[1], self.num_kv_heads, self.group, self.head_dim
        padded = self._pad(q, (u, self.slots, kv, g, d)).permute(0, 2, 1, 3, 4).reshape(u, kv, self.slots * g, d)
        scores = torch.matmul(padded, self.prompt_k[index].transpose(-1, -2)) + self.prompt_mask
        return self._unpad(scores.view(u, kv, self.slots, g, -1).permute(0, 2, 1, 3, 4))

    def _pad(self, rows: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Per-row ``[N, …]`` to the padded ``[U, slots, …]`` layout."""
        if self.uniform:
            return rows.view(shape)
        padded = rows.new_zeros(shape)
        padded[self.rows, self.slot] = rows
        return padded

    def _unpad(self, padded: Tensor) -> Tensor:
        """Padded ``[U, slots, …]`` back to per-row ``[N, …]``."""
        if self.uniform:
            return padded.reshape(-1, *padded.shape[2:])
        return padded[self.rows, self.slot]

    def _prompt_values(self, probs: Tensor, index: int) -> Tensor:
        """Attention weights ``[N, kv, g, P]`` over each row's shared prompt values: ``[N, kv, g, d]``."""
        u, kv, g, p = self.prompt_v.shape[1], self.num_kv_heads, self.group, probs.shape[-1]
        padded = self._pad(probs, (u, self.slots, kv, g, p)).permute(0, 2, 1, 3, 4).reshape(u, kv, self.slots * g, p)
        out = torch.matmul(padded, self.prompt_v[index])
        return self._unpad(out.view(u, kv, self.slots, g, -1).permute(0, 2, 1, 3, 4))

    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row ``[N]``; return next-token logits ``[N, V]``."""
        slot = self.length
        if slot >= self.max_length:
            raise ValueError(f"static KV cache full ({self.max_length} slots)")
        n, kv, g, d = self.batch_size, self.num_kv_heads, self.group, self.head_dim
        cos, sin = self.cos[self.positions][:, None, None], self.sin[self.positions][:, None, None]
        key_mask = self.key_mask[..., : slot + 1]
        x = F.embedding(tokens[:, None], self.embed)
        first = self.prompt_k.shape[3] if self.shared else 0  # position of the cache's slot 0
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            q = q.reshape(n, kv, g, d)
            keys = self.k_cache[index, :, :, : slot - first + 1]
            values = self.v_cache[index, :, :, : slot - first + 1]
            keys[:, :, slot - first] = k[:, 0]
            values[:, :, slot - first] = v[:, 0]
            # Grouped-query attention without repeating keys: [N, kv, g, d] @ [N, kv, d, S].
            scores = torch.matmul(q, keys.transpose(-1, -2))
            if self.shared:
                scores = torch.cat([self._prompt_scores(q, index), scores], dim=-1)
            else:
                scores = scores + key_mask
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)
            if self.shared:
                out = self._prompt_values(probs[..., :first], index) + torch.matmul(probs[..., first:], values)
            else:
                out = torch.matmul(probs, values)
            x = x + F.linear(out.reshape(n, 1, -1), layer.o_w, layer.o_b)
            x = x + layer.mlp(rms_norm(x, layer.norm2, layer.eps))
        self.length = slot + 1
        self.positions += 1
        return self._head(x[:, 0])
