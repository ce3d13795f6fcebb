"""The pure-torch fast decoder must reproduce the Hugging Face forward (fp32, within 1e-4)."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from sspo.models.fast_decoder import FastDecoder, unsupported_reason
from sspo.trainer.sampling import left_pad, position_ids_from_mask


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine threads oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


VOCAB = 50


def _randomise_small_params(model: torch.nn.Module, seed: int) -> None:
    """HF zero-initialises biases and sets norm weights to one; perturb them so they are tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))


def make_qwen2(seed=0) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    _randomise_small_params(model, seed)
    return model


def make_llama(seed=0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=3, head_dim=16, attention_bias=True,
                         mlp_bias=True, max_position_embeddings=128, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    _randomise_small_params(model, seed)
    return model


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [3]]


@pytest.mark.parametrize("make", [make_qwen2, make_llama], ids=["qwen2", "llama"])
def test_prefill_and_decode_logits_match_hf_forward(make):
    model = make()
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    valid = mask.bool()
    new_tokens = torch.tensor([[1, 2, 3, 4], [40, 41, 42, 43], [7, 7, 7, 7], [20, 30, 40, 49]])
    with torch.inference_mode():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        decoder = FastDecoder(model, batch_size=len(PROMPTS), max_length=ids.shape[1] + 4)
        fast = decoder.prefill(ids, mask, all_logits=True)
        assert (fast - reference)[valid].abs().max() < 1e-4
        assert (reference[valid].std() > 0.1)  # a meaningful comparison, not two near-constant tensors
        for t in range(new_tokens.shape[1]):
            step_logits = decoder.step(new_tokens[:, t])
            full_ids = torch.cat([ids, new_tokens[:, : t + 1]], dim=1)
            full_mask = torch.cat([mask, torch.ones_like(new_tokens[:, : t + 1])], dim=1)
            full = model(input_ids=full_ids, attention_mask=full_mask,
                         position_ids=position_ids_from_mask(full_mask)).logits[:, -1]
            assert (step_logits - full).abs().max() < 1e-4


def test_left_padding_does_not_change_a_row():
    model = make_qwen2(seed=3)
    with torch.inference_mode():
        alone = FastDecoder(model, 1, 8).prefill(torch.tensor([[12, 13]]), torch.ones(1, 2, dtype=torch.long))
        ids, mask = left_pad(PROMPTS, pad_token_id=0)
        batched = FastDecoder(model, len(PROMPTS), ids.shape[1]).prefill(ids, mask)
    assert (alone[0] - batched[1]).abs().max() < 1e-5


def test_unsupported_models_are_reported():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert "model_type 'gpt2'" in unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="gpt2"):
        FastDecoder(gpt2, 1, 8)
    sliding = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True,
                                           sliding_window=16, max_window_layers=0))
    assert "sliding" in unsupported_reason(sliding, max_length=64)
    assert unsupported_reason(sliding, max_length=16) is None
    assert unsupported_reason(make_qwen2()) is None


def test_shared_prefill_and_row_selection_match_the_full_batch():
    model = make_qwen2(seed=5)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    rows = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1])
    tokens = torch.tensor([[4, 9, 16, 25, 36, 49, 1, 8], [2, 3, 5, 7, 11, 13, 17, 19]])
    with torch.inference_mode():
        full = FastDecoder(model, len(rows), ids.shape[1] + 2)
        shared = FastDecoder(model, len(rows), ids.shape[1] + 2)
        assert torch.allclose(shared.prefill(ids, mask, rows=rows), full.prefill(ids[rows], mask[rows]), atol=1e-5)
        first_full, first_shared = full.step(tokens[0]), shared.step(tokens[0])
        assert torch.allclose(first_shared, first_full, atol=1e-5)
        keep = torch.tensor([1, 4, 7])
        shared.select_rows(keep)
        assert torch.allclose(shared.step(tokens[1, keep]), full.step(tokens[1])[keep], atol=1e-5)


def test_bfloat16_model_runs_close_to_hf():
    model = make_qwen2(seed=2).to(torch.bfloat16)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    with torch.inference_mode():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        decoder = FastDecoder(model, len(PROMPTS), ids.shape[1] + 1)
        fast = decoder.prefill(ids, mask)
        step = decoder.step(torch.tensor([1, 2, 3, 4]))
    assert fast.dtype == torch.bfloat16 and bool(torch.isfinite(step).all())
    assert (fast.float() - reference[:, -1].float()).abs().max() < 0.1


def test_one_shared_prompt_for_every_row_decodes_like_hf():
    """All rows sampling one prompt (``prompts_per_step=1``: a group of one problem) once crashed the
    shared-prompt decode step (a view of a non-contiguous tensor); greedy tokens must equal the HF path's."""
    from sspo.models.tiny import build_char_tokenizer, build_tiny_model
    from sspo.trainer.sampling import sample

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(tok).eval()
    prompts = [tok("12+3=")["input_ids"]] * 4
    kwargs = dict(max_new_tokens=5, eos_token_id=None, pad_token_id=tok.pad_token_id, greedy=True)
    fast = sample(model, prompts, backend="fast", **kwargs)
    slow = sample(model, prompts, backend="hf", **kwargs)
    assert torch.equal(fast.response_ids, slow.response_ids) and fast.response_ids.shape == (4, 5)
