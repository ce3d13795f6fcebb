"""Random float64 batches and engine configs shared by the integration tests."""

import torch


def random_batch(seed: int = 0, batch: int = 6, length: int = 9, drift: float = 0.4, empty_row: bool = False):
    """``(log_probs (leaf), old, advantages[B], mask[B, T] bool)`` with ragged lengths and real drift."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3 - 0.05
    log_probs = (old + drift * torch.randn(batch, length, generator=g, dtype=torch.float64)).requires_grad_(
        True
    )
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    if empty_row:
        lengths[1] = 0
    mask = torch.arange(length)[None, :] < lengths[:, None]
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    return log_probs, old, adv, mask


def token_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token advantages as verl passes them: the sequence advantage on every token, 0 on padding."""
    return torch.where(mask, adv[:, None].expand(mask.shape), torch.zeros((), dtype=adv.dtype))


def grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, leaf)
    return g


def actor_config(**overrides):
    """A verl ``ActorConfig`` that builds on CPU (verl's own losses assert this type)."""
    from verl.workers.config import ActorConfig

    base = dict(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, use_dynamic_bsz=False)
    return ActorConfig(rollout_n=1, **{**base, **overrides})


def save_tiny_model(path) -> None:
    """A 2-layer Qwen2 (hidden 32) and a character-level tokenizer, built offline and saved to ``path``."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {
        t: i
        for i, t in enumerate(["<pad>", "<eos>", "<unk>", *string.ascii_lowercase, *string.digits, *" +=?."])
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=True,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(path)
