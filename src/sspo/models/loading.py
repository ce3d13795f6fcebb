"""Load a causal LM and its tokenizer by name: ``"tiny"``, a local directory, or a Hugging Face hub id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from sspo.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

TINY_NAME = "tiny"
TINY_SIZES: dict[str, TinyModelConfig] = {
    TINY_NAME: TinyModelConfig(),
    "tiny-4x": TinyModelConfig(hidden_size=256, num_heads=8, num_kv_heads=4, intermediate_size=768),
}
"""Built-in model names: ``tiny`` (~0.8M parameters) and ``tiny-4x`` (twice as wide, ~3.2M: the stress
ladder's scale check), both with the character tokenizer."""

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class ModelUnavailableError(RuntimeError):
    """A model could not be loaded from its directory or the hub (missing files, no network, ...)."""


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(name: str, is_local: bool, **kwargs) -> PreTrainedTokenizerBase:
    """``AutoTokenizer``, except that a local tokenizer saved as a generic fast tokenizer (like the tiny
    model's character tokenizer) is loaded as exactly that: transformers 5 would otherwise rebuild it
    as the model type's tokenizer (``Qwen2Tokenizer``), whose pre-tokenizer drops spaces and newlines."""
    config = Path(name) / "tokenizer_config.json"
    if is_local and config.is_file():
        declared = json.loads(config.read_text()).get("tokenizer_class")
        if declared in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(name, **kwargs)
    return AutoTokenizer.from_pretrained(name, **kwargs)


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (its eos token) when it has none; the sampler needs one."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token; set one before training")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    tiny_config: TinyModelConfig | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for a causal LM.

    - ``"tiny"`` or ``"tiny-4x"`` (:data:`TINY_SIZES`): the built-in character tokenizer and a fresh tiny
      Qwen2 of that size (or of ``tiny_config``).
    - a local directory: loaded with ``AutoTokenizer`` / ``AutoModelForCausalLM`` (no network).
    - anything else: treated as a hub id; with ``HF_HUB_OFFLINE=1`` only the local cache is consulted.
      If it cannot be fetched, a :class:`ModelUnavailableError` (a ``RuntimeError``) says so and suggests
      a local path.

    ``dtype`` is a ``torch.dtype`` or a name (``"bf16"``, ``"float32"``, ...); ``None`` keeps the
    checkpoint's dtype (float32 for ``"tiny"``). A tokenizer without a pad token gets its eos token as
    pad. Padding side is left as loaded: the sampler left-pads prompts itself.
    """
    torch_dtype = _resolve_dtype(dtype)
    name = os.fspath(name_or_path)
    if name in TINY_SIZES:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, tiny_config or TINY_SIZES[name])
    else:
        if tiny_config is not None:
            raise ValueError("tiny_config is only used when name_or_path == 'tiny'")
        is_local = Path(name).is_dir()
        if not is_local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise ValueError(f"name_or_path {name!r} is neither 'tiny', an existing directory, nor a hub id")
        kwargs = {"local_files_only": is_local or _hub_offline()}
        try:
            tokenizer = _load_tokenizer(name, is_local, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **kwargs)
        except OSError as err:  # raised for missing files, unreachable hub and offline cache misses
            where = "the local directory" if is_local else "the Hugging Face hub (or its local cache)"
            raise ModelUnavailableError(
                f"could not load model {name!r} from {where}: {str(err).strip().rstrip('.')}. "
                "Without network access, download the model elsewhere and pass its local directory "
                "(containing config.json, the weights and the tokenizer files) as name_or_path, "
                "or use 'tiny' for the built-in model."
            ) from err
    tokenizer = _finish_tokenizer(tokenizer)
    if torch_dtype is not None:
        model = model.to(dtype=torch_dtype)
    return model.to(device), tokenizer
