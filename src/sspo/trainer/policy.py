"""Log-probabilities of response tokens under a causal LM, without full-vocabulary logits.

The decoder's final hidden states at positions ``P−1 … P+R−2`` predict the response tokens at
``P … P+R−1``; :func:`sspo.token_logprobs_from_hidden` turns them into log-probs and entropies one
chunk of rows at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..logprobs import token_logprobs_from_hidden


def position_ids(attention_mask: Tensor) -> Tensor:
    """0 at each row's first real token (prompts are left-padded)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_ids: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``log π(y_t | x, y_<t) `` at temperature ``τ`` for ``response_ids [N, R]`` (the last ``R``
    columns of ``input_ids [N, P+R]``), and the token entropies. Gradients flow to the model."""
    width = response_ids.shape[1]
    start = input_ids.shape[1] - width
    decoder = model.get_decoder()
    hidden = decoder(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids(attention_mask)[:, :-1],
        use_cache=False,
    ).last_hidden_state[:, start - 1 :]
    head = model.get_output_embeddings()
    return token_logprobs_from_hidden(
        hidden, head.weight, response_ids, bias=getattr(head, "bias", None),
        temperature=temperature, with_entropy=with_entropy,
    )  # fmt: skip


@torch.no_grad()
def response_logprobs_no_grad(model: nn.Module, input_ids, attention_mask, response_ids, *, temperature, batch_size=64):
    """:func:`response_logprobs` without gradients, in batches (behaviour / reference policies)."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            response_logprobs(model, input_ids[i : i + batch_size], attention_mask[i : i + batch_size],
                              response_ids[i : i + batch_size], temperature=temperature, with_entropy=False)[0]
            for i in range(0, input_ids.shape[0], batch_size)
        ]  # fmt: skip
    finally:
        model.train(was_training)
    return torch.cat(parts)
