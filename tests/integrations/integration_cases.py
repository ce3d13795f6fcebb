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


def trl_loss(loss_type, log_probs, old, adv, mask, *, level="token", eps_low=0.2, eps_high=0.2, tau_pos=1.0,
             tau_neg=1.05, max_len=None, is_ratio=None, vespo=(2.0, 3.0, 3.0, 2.0)):  # fmt: skip
    """TRL 1.16's ``GRPOTrainer._compute_loss`` run unbound on a stand-in trainer whose log-probs are ours
    (one process, no accumulation, on-line training mode). ``is_ratio``: TRL's vLLM
    ``importance_sampling_ratio`` (switches its vLLM correction on); ``vespo``: ``(k_pos, λ_pos, k_neg, λ_neg)``."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (log_probs, torch.zeros_like(log_probs), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=0.0,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)}, max_completion_length=max_len,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
        args=SimpleNamespace(delta=None, sapo_temperature_pos=tau_pos, sapo_temperature_neg=tau_neg,
                             steps_per_generation=1, use_bias_correction_kl=False, vespo_k_pos=vespo[0],
                             vespo_lambda_pos=vespo[1], vespo_k_neg=vespo[2], vespo_lambda_neg=vespo[3]),
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x),
    )  # fmt: skip
    batch, length = mask.shape
    inputs = dict(
        prompt_ids=torch.zeros(batch, 1, dtype=torch.long), prompt_mask=torch.ones(batch, 1, dtype=torch.long),
        completion_ids=torch.zeros(batch, length, dtype=torch.long), completion_mask=mask.long(),
        advantages=adv, old_per_token_logps=old, num_items_in_batch=mask.sum(),
    )  # fmt: skip
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    return GRPOTrainer._compute_loss(stub, None, inputs)
