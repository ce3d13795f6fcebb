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
from torch import Tensor, nn
from transformers import DynamicCache

from ..logprobs import token_logprobs_from_hidden


def position_ids(attention_mask: Tensor) -> Tensor:
    """0 at each row's first real token (prompts are left-padded)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, width: int, groups: Tensor | None):
    """Final hidden states ``[N, width, H]`` that predict the last ``width`` tokens of ``input_ids``."""
    decoder = model.get_decoder()
    positions = position_ids(attention_mask)
    start = input_ids.shape[1] - width
    if groups is None:
        return decoder(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                       position_ids=positions[:, :-1], use_cache=False).last_hidden_state[:, start - 1 :]  # fmt: skip
    unique, inverse = torch.unique(groups, return_inverse=True)
    first = torch.full((len(unique),), len(groups), dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(groups), device=groups.device), "amin")
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
