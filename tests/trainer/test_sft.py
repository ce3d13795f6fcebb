"""Tests for the supervised warm start."""

import string

import pytest
import torch

from sspo.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
from sspo.trainer.sampling import sample
from sspo.trainer.sft import collate, encode_pairs, lr_factor, sft_train


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine threads oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


LETTERS = string.ascii_lowercase
PAIRS = [(f"{LETTERS[i]}\n", LETTERS[i + 1] * 2) for i in range(20)]  # "a\n" -> "bb", ...


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def small_model(tokenizer, seed=0):
    return build_tiny_model(tokenizer, TinyModelConfig(num_layers=2, hidden_size=64, intermediate_size=128,
                                                       num_heads=4, num_kv_heads=2, seed=seed))


def test_sft_learns_pairs_and_greedy_sampling_reproduces_them(tokenizer):
    model = small_model(tokenizer)
    logs = []
    out = sft_train(model, tokenizer, PAIRS, steps=80, batch_size=20, lr=1e-2, seed=0, log_every=20,
                    callback=logs.append)
    assert out["steps"] == 80 and out["stopped"] == "steps"
    assert out["initial_loss"] > 3.0 and out["last_loss"] < 0.05 * out["initial_loss"]
    assert [entry["step"] for entry in logs] == [20, 40, 60, 80]
    assert logs[-1]["loss"] < logs[0]["loss"]
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in PAIRS]
    rollout = sample(model, prompts, max_new_tokens=5, greedy=True, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    texts = [tokenizer.decode(ids[mask]) for ids, mask in zip(rollout.response_ids, rollout.response_mask)]
    assert texts == [completion + "<eos>" for _, completion in PAIRS]


def test_sft_is_deterministic_given_seed(tokenizer):
    runs = []
    for _ in range(2):
        model = small_model(tokenizer)
        out = sft_train(model, tokenizer, PAIRS, steps=4, batch_size=8, seed=3, warmup=1)
        runs.append((out["last_loss"], model.lm_head.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_loss_masks_prompt_and_padding(tokenizer):
    encoded = encode_pairs(tokenizer, [("ab\n", "c"), ("d\n", "ef")])
    eos = tokenizer.eos_token_id
    assert encoded[0] == (tokenizer("ab\nc", add_special_tokens=False)["input_ids"] + [eos], 3)
    input_ids, labels = collate(encoded, [0, 1], tokenizer.pad_token_id, "cpu")
    c, e, f = (tokenizer.convert_tokens_to_ids(ch) for ch in "cef")
    assert labels.tolist() == [[-100, -100, -100, c, eos], [-100, -100, e, f, eos]]
    assert input_ids[1, -1] == eos and input_ids.shape == (2, 5)


def test_callback_and_time_budget_stop_early(tokenizer):
    out = sft_train(small_model(tokenizer), tokenizer, PAIRS, steps=50, batch_size=4, log_every=2,
                    callback=lambda metrics: metrics["step"] >= 4)
    assert (out["steps"], out["stopped"]) == (4, "callback")
    out = sft_train(small_model(tokenizer), tokenizer, PAIRS, steps=10_000, batch_size=4, time_budget_s=0.3)
    assert out["stopped"] == "time_budget" and out["steps"] < 10_000


def test_lr_schedule_shape():
    kw = {"steps": 110, "warmup": 10, "min_lr_ratio": 0.1}
    assert lr_factor(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(109, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(59.5, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_factor(50, schedule="constant", **kw) == 1.0


@pytest.mark.parametrize(("kwargs", "field"), [({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"),
                                               ({"schedule": "step"}, "schedule"), ({"warmup": -1}, "warmup")])
def test_sft_rejects_bad_arguments(tokenizer, kwargs, field):
    args = {"steps": 2} | kwargs
    with pytest.raises(ValueError, match=field):
        sft_train(small_model(tokenizer), tokenizer, PAIRS, **args)
