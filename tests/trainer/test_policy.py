"""Response log-probs: the prompt-sharing path equals the plain forward in values and gradients."""

import pytest
import torch

from sspo.models.loading import load_model_and_tokenizer
from sspo.trainer.policy import response_logprobs


def _batch(n=12, g=4, p=10, r=6):
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 90, (n // g, p), generator=gen).repeat_interleave(g, 0)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    for k in range(n // g):
        prompt_mask[k * g : (k + 1) * g, :k] = 0  # a different left padding per group
    response = torch.randint(3, 90, (n, r), generator=gen)
    response_mask = torch.ones(n, r, dtype=torch.long)
    response_mask[1, 3:] = 0
    response_mask[6, 1:] = 0
    ids = torch.cat([prompts.masked_fill(prompt_mask == 0, 0), response], 1)
    return ids, torch.cat([prompt_mask, response_mask], 1), response, response_mask.bool(), torch.arange(n) // g


def test_shared_prompt_forward_matches_plain_forward():
    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer("tiny")
    model.eval()
    ids, attention, response, mask, groups = _batch()
    plain, plain_ent = response_logprobs(model, ids, attention, response)
    shared, shared_ent = response_logprobs(model, ids, attention, response, groups=groups)
    torch.testing.assert_close(shared[mask], plain[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_ent[mask], plain_ent[mask], atol=1e-5, rtol=1e-5)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    g_plain = torch.autograd.grad(((plain + plain_ent) * weights * mask).sum(), params)
    g_shared = torch.autograd.grad(((shared + shared_ent) * weights * mask).sum(), params)
    for a, b in zip(g_plain, g_shared):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    rows = torch.tensor([7, 0, 3, 11, 4])  # any subset and order of rows, groups split across it
    subset, _ = response_logprobs(model, ids[rows], attention[rows], response[rows], groups=groups[rows])
    torch.testing.assert_close(subset[mask[rows]], plain[rows][mask[rows]], atol=1e-5, rtol=1e-5)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=99, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, max_position_embeddings=64, attention_bias=True, rope_theta=500.0)  # fmt: skip
    torch.manual_seed(1)
    return LlamaForCausalLM(config)


def _grads(model, ids, attention, response, mask, groups, lean):
    model.sspo_lean_forward = lean
    logp, ent = response_logprobs(model, ids, attention, response, groups=groups)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1), dtype=logp.dtype)
    grads = torch.autograd.grad(((logp + ent) * weights * mask).sum(), list(model.parameters()))
    return logp[mask], ent[mask], grads


@pytest.mark.parametrize("build", ["tiny", "llama"])
def test_lean_forward_matches_the_transformers_forward(build):
    from sspo.trainer.policy import lean_forward_ok

    model = (load_model_and_tokenizer("tiny")[0] if build == "tiny" else _llama()).double().eval()
    assert lean_forward_ok(model)
    ids, attention, response, mask, groups = _batch()
    # float64 throughout: sharing a prompt across its group changes nothing but summation order
    lean_plain, lean_shared = (_grads(model, ids, attention, response, mask, g, True) for g in (None, groups))
    for a, b in zip(lean_plain[:2] + lean_plain[2], lean_shared[:2] + lean_shared[2]):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    # transformers normalises in float32 even for float64 weights: agreement to float32 rounding
    hf_plain = _grads(model, ids, attention, response, mask, None, False)
    for a, b in zip(hf_plain[:2] + hf_plain[2], lean_plain[:2] + lean_plain[2]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    model.sspo_lean_forward = True  # width 1: the prompt pass alone predicts the first response token
    first, _ = response_logprobs(model, ids[:, :11], attention[:, :11], response[:, :1], groups=groups)
    full, _ = response_logprobs(model, ids, attention, response, groups=groups)
    torch.testing.assert_close(first[:, 0], full[:, 0], atol=1e-12, rtol=1e-12)


def test_lean_forward_is_not_used_for_training_mode_or_when_switched_off():
    from sspo.trainer.policy import lean_forward_ok

    model = load_model_and_tokenizer("tiny")[0]
    assert not lean_forward_ok(model.train())
    model.eval().sspo_lean_forward = False
    assert not lean_forward_ok(model)
