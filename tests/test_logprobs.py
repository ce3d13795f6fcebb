"""Chunked log-probs and entropy equal log_softmax (fp32, 1e-5), with gradients."""

import pytest
import torch

import sspo


def _naive(logits, labels, temperature):
    logp_all = torch.log_softmax(logits.float() / temperature, -1)
    logp = logp_all.gather(-1, labels[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_from_logits_matches_log_softmax(temperature, chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 50, generator=g) * 3).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    w1, w2 = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    lp, ent = sspo.token_logprobs(logits, labels, temperature=temperature, chunk_size=chunk_size)
    ref_lp, ref_ent = _naive(logits, labels, temperature)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    (g_ours,) = torch.autograd.grad((lp * w1 + ent * w2).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref_lp * w1 + ref_ent * w2).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


def test_from_logits_without_entropy_and_float64_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (4,), generator=g)
    lp, ent = sspo.token_logprobs(logits, labels, with_entropy=False, chunk_size=3)
    assert ent is None and lp.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: sspo.token_logprobs(x, labels, chunk_size=3, temperature=0.9), (logits,))


@pytest.mark.parametrize("with_bias", [False, True])
def test_from_hidden_matches_and_grads_flow(with_bias):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    weight = torch.randn(40, 8, generator=g, requires_grad=True)
    bias = torch.randn(40, generator=g, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 40, (2, 5), generator=g)
    w1, w2 = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    lp, ent = sspo.token_logprobs_from_hidden(hidden, weight, labels, bias=bias, temperature=0.8, chunk_size=3)
    logits = hidden @ weight.T + (bias if with_bias else 0)
    ref_lp, ref_ent = _naive(logits, labels, 0.8)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    params = [hidden, weight] + ([bias] if with_bias else [])
    ours = torch.autograd.grad((lp * w1 + ent * w2).sum(), params)
    ref = torch.autograd.grad((ref_lp * w1 + ref_ent * w2).sum(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_bf16_logits_give_fp32_outputs_and_bf16_grads():
    logits = torch.randn(4, 30, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 30, (4,))
    lp, ent = sspo.token_logprobs(logits, labels)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    ref_lp, _ = _naive(logits, labels, 1.0)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(lp.sum(), logits)
    assert g.dtype == torch.bfloat16


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\)"):
        sspo.token_logprobs(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sspo.token_logprobs(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature=0)
    with pytest.raises(ValueError, match=r"weight must be \[V, H=8\]"):
        sspo.token_logprobs_from_hidden(torch.randn(2, 8), torch.randn(5, 7), torch.zeros(2, dtype=torch.long))
