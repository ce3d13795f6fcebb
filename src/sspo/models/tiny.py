"""A built-in tiny model: a character-level tokenizer and a ~0.8M-parameter Qwen2, both built offline.

The tokenizer maps every printable ASCII character (codes 32-126) and ``"\\n"`` to one token, plus the
special tokens ``<pad>`` (id 0), ``<eos>`` (id 1, also the bos token) and ``<unk>`` (id 2, for any other
character). It has no chat template: prompts for it are raw text such as ``"question\\n"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
CHARACTERS = tuple(chr(code) for code in range(32, 127)) + ("\n",)


def build_char_tokenizer(save_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (99 tokens); save it to ``save_dir`` when given.

    It behaves like any Hugging Face fast tokenizer: ``save_pretrained`` writes ``tokenizer.json`` and
    ``AutoTokenizer.from_pretrained`` loads it back. No bos token is prepended on encoding.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


@dataclass
class TinyModelConfig:
    """Shape of the built-in tiny Qwen2 model. The defaults give about 0.80M parameters."""

    hidden_size: int = 128
    """Width of the residual stream (also the embedding size)."""
    num_layers: int = 4
    """Number of transformer decoder layers."""
    num_heads: int = 4
    """Number of query attention heads; must divide ``hidden_size``."""
    num_kv_heads: int = 2
    """Number of key/value heads (grouped-query attention); must divide ``num_heads``."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP."""
    max_position_embeddings: int = 512
    """Longest sequence (prompt + response) the model is meant for."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies."""
    seed: int = 0
    """Seed of the weight initialisation; the same seed gives bit-identical weights."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TinyModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TinyModelConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("TinyModelConfig.hidden_size / num_heads must be even for rotary embeddings")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"TinyModelConfig.num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})"
            )
        if self.rope_theta <= 0:
            raise ValueError(f"TinyModelConfig.rope_theta must be positive, got {self.rope_theta}")


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig | None = None
) -> Qwen2ForCausalLM:
    """Build a randomly initialised Qwen2 causal LM sized by ``config`` for ``tokenizer``'s vocabulary.

    Embeddings are tied to the output head. Initialisation runs under a forked RNG seeded with
    ``config.seed``, so it is deterministic and leaves the global RNG untouched. The model is returned
    in eval mode (it has no dropout, so the mode only matters to code that checks it).
    """
    config = config or TinyModelConfig()
    config.validate()
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("tokenizer must define pad_token_id and eos_token_id")
    hf_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()
