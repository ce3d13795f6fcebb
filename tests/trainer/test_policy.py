"""Response log-probs: the prompt-sharing path equals the plain forward in values and gradients."""

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
