"""Tests for batched sampling: back-end agreement, EOS masking, top-p, log-probs and determinism."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sspo.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
from sspo.trainer.sampling import (
    Rollout,
    left_pad,
    position_ids_from_mask,
    sample,
    select_tokens,
    top_p_filter,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine threads oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


PROMPT_TEXTS = ["Tom has 3 apples. How many?\n", "1+2=\n", "abc\n", "What is 9-4?\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(tokenizer, TinyModelConfig(num_layers=2, seed=7))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in PROMPT_TEXTS]


def run(model, prompts, backend, seed=0, **kwargs):
    kwargs.setdefault("max_new_tokens", 12)
    kwargs.setdefault("eos_token_id", 1)
    return sample(model, prompts, pad_token_id=0, generator=torch.Generator().manual_seed(seed),
                  backend=backend, **kwargs)


def recomputed_log_probs(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each response token from one full forward of the rollout."""
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=rollout.position_ids).logits
    p, r = rollout.prompt_width, rollout.response_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : p + r - 1].float() / temperature, dim=-1)
    return logp.gather(-1, rollout.response_ids[:, :, None])[:, :, 0] * rollout.response_mask


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_backends_sample_identical_tokens_and_log_probs(model, prompts, temperature, top_p):
    # Repeated prompts (shared prefill) and several stop tokens, so rows finish at different steps
    # and the fast back-end drops finished rows while the HF one keeps them.
    stop = [1, 40, 50, 60, 70, 80]
    fast = run(model, prompts * 3, "fast", temperature=temperature, top_p=top_p, eos_token_id=stop,
               max_new_tokens=24)
    hf = run(model, prompts * 3, "hf", temperature=temperature, top_p=top_p, eos_token_id=stop, max_new_tokens=24)
    lengths = fast.response_lengths.unique()
    assert len(lengths) >= 3 and int(lengths.min()) < 12  # the case is not trivial
    assert torch.equal(fast.response_ids, hf.response_ids)
    assert torch.equal(fast.response_mask, hf.response_mask)
    assert torch.allclose(fast.old_log_probs, hf.old_log_probs, atol=1e-5)
    assert torch.allclose(fast.old_log_probs, recomputed_log_probs(model, fast, temperature), atol=1e-4)


def test_greedy_matches_across_backends_and_recomputation(model, prompts):
    fast = run(model, prompts, "fast", greedy=True, temperature=0.5)
    hf = run(model, prompts, "hf", greedy=True, temperature=0.5)
    assert torch.equal(fast.response_ids, hf.response_ids)
    with torch.no_grad():  # greedy: each token is the argmax of the full-forward logits
        logits = model(input_ids=fast.input_ids, position_ids=fast.position_ids,
                       attention_mask=fast.attention_mask).logits
    p, r = fast.prompt_width, fast.response_ids.shape[1]
    argmax = logits[:, p - 1 : p + r - 1].argmax(-1)
    assert torch.equal(argmax[fast.response_mask], fast.response_ids[fast.response_mask])
    assert torch.allclose(fast.old_log_probs, recomputed_log_probs(model, fast, 0.5), atol=1e-4)


def test_rollout_layout(model, prompts):
    rollout = run(model, prompts, "auto", max_new_tokens=6, eos_token_id=None)
    width = max(len(p) for p in prompts)
    assert rollout.input_ids.shape == (4, width + 6) and rollout.prompt_width == width
    assert torch.equal(rollout.input_ids[:, width:], rollout.response_ids)
    assert rollout.prompt_lengths.tolist() == [len(p) for p in prompts]
    assert rollout.response_lengths.tolist() == [6] * 4 and bool(rollout.response_mask.all())
    for row, ids in enumerate(prompts):
        assert rollout.input_ids[row, width - len(ids) : width].tolist() == ids
        assert rollout.attention_mask[row, : width - len(ids)].sum() == 0
        assert rollout.input_ids[row, : width - len(ids)].eq(0).all()
    assert rollout.old_log_probs.dtype == torch.float32 and bool((rollout.old_log_probs < 0).all())
    weight = torch.ones((), requires_grad=True)  # returned tensors are usable in autograd
    (rollout.old_log_probs * weight).sum().backward()
    assert weight.grad is not None


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_eos_stops_rows_and_masks_the_rest(model, prompts, backend):
    free = run(model, prompts, backend, eos_token_id=None, max_new_tokens=10)
    first = free.response_ids[0].tolist()
    stop_at = next(k for k in range(2, 10) if first[k] not in first[:k])
    eos = first[stop_at]  # the token row 0 samples at step stop_at plays EOS (with the real EOS, id 1)
    # Same seed: random draws do not depend on which rows are done, so rows agree up to their EOS.
    stopped = run(model, prompts, backend, eos_token_id=[eos, 1], max_new_tokens=10)
    r = stopped.response_ids.shape[1]
    lengths = []
    for row in range(len(prompts)):
        tokens = free.response_ids[row].tolist()
        length = min([tokens.index(t) + 1 for t in (eos, 1) if t in tokens], default=10)
        lengths.append(length)
        assert stopped.response_lengths[row] == length
        assert stopped.response_ids[row, :length].tolist() == tokens[:length]  # EOS included
        assert stopped.response_mask[row].tolist() == [True] * length + [False] * (r - length)
        assert stopped.response_ids[row, length:].eq(0).all()  # pad after EOS
        assert stopped.old_log_probs[row, length:].eq(0).all()
        assert torch.allclose(stopped.old_log_probs[row, :length], free.old_log_probs[row, :length], atol=1e-6)
        assert stopped.attention_mask[row, stopped.prompt_width + length :].eq(0).all()
    assert lengths[0] == stop_at + 1
    assert r == max(lengths)  # decoding ends when every row is done


def test_seeded_sampling_is_deterministic(model, prompts):
    a = run(model, prompts * 2, "auto", seed=11)
    b = run(model, prompts * 2, "auto", seed=11)
    c = run(model, prompts * 2, "auto", seed=12)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.old_log_probs, b.old_log_probs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_p_filter_on_hand_made_distribution():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    kept = {0.2: [1], 0.5: [1], 0.6: [1, 3], 0.75: [1, 3], 0.8: [1, 2, 3], 1.0: [0, 1, 2, 3]}
    for top_p, expected in kept.items():
        assert top_p_filter(probs, top_p)[0].nonzero()[:, 0].tolist() == expected, top_p


def test_select_tokens_frequencies_and_recorded_log_probs():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])
    logits = probs.log().expand(40_000, 4)
    gen = torch.Generator().manual_seed(0)
    tokens, logps = select_tokens(logits, top_p=0.7, generator=gen)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, torch.tensor([0.0, 2 / 3, 0.0, 1 / 3]), atol=0.01)
    assert torch.allclose(logps, probs.log()[tokens], atol=1e-6)  # top-p leaves the log-prob unchanged
    tokens, logps = select_tokens(logits, temperature=2.0, generator=gen)
    tempered = torch.softmax(probs.log() / 2.0, dim=-1)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, tempered, atol=0.01)
    assert torch.allclose(logps, tempered.log()[tokens], atol=1e-6)
    greedy, logp = select_tokens(logits[:2], greedy=True)
    assert greedy.tolist() == [1, 1] and math.isclose(float(logp[0]), math.log(0.5), rel_tol=1e-6)


def test_generic_backend_on_a_non_llama_model():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    rollout = sample(gpt2, prompts, max_new_tokens=5, greedy=True, eos_token_id=None, pad_token_id=0)
    ids, mask = left_pad(prompts, 0)
    with torch.no_grad():  # reference: greedy decoding by full forwards without a cache
        for _ in range(5):
            logits = gpt2(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(rollout.input_ids, ids)
    with pytest.raises(ValueError, match="gpt2"):
        sample(gpt2, prompts, max_new_tokens=2, eos_token_id=None, pad_token_id=0, backend="fast")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"temperature": 0.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens"),
     ({"backend": "vllm"}, "backend"), ({"prompt_ids": [[3], []]}, r"prompt_ids\[1\]")],
)
def test_sample_rejects_bad_arguments(model, kwargs, message):
    args = {"prompt_ids": [[3, 4]], "max_new_tokens": 2, "eos_token_id": 1, "pad_token_id": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        sample(model, **args)
