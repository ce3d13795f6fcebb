"""Tests for the built-in character tokenizer, the tiny Qwen2 and model loading."""

import time

import pytest
import torch
from transformers import AutoTokenizer

from sspo.models.loading import load_model_and_tokenizer
from sspo.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine threads oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TEXT = "Tom has 3 apples. He gets 4 more.\n3+4=7. 7-2=5. #### 5"


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_tokenizer_is_one_token_per_character(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)
    assert tokenizer.decode(ids) == TEXT
    assert len(tokenizer) == 3 + 95 + 1
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert tokenizer.convert_tokens_to_ids(list(" ~a\n")) == [3, 3 + 94, 3 + ord("a") - 32, 98]
    assert tokenizer.chat_template is None


def test_tokenizer_specials_and_unknown(tokenizer):
    ids = tokenizer("a\tb<eos>", add_special_tokens=False)["input_ids"]
    assert ids == [3 + ord("a") - 32, tokenizer.unk_token_id, 3 + ord("b") - 32, tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ab"
    assert tokenizer("x")["input_ids"] == [3 + ord("x") - 32]  # no bos added


def test_tokenizer_save_and_auto_load(tmp_path, tokenizer):
    build_char_tokenizer(save_dir=tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(TEXT, add_special_tokens=False)["input_ids"] == tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert (loaded.pad_token, loaded.eos_token) == ("<pad>", "<eos>")


def test_tiny_model_size_tied_and_deterministic(tokenizer):
    model = build_tiny_model(tokenizer)
    count = sum(p.numel() for p in model.parameters())
    assert 0.8e6 <= count <= 1.2e6
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tokenizer)
    again = build_tiny_model(tokenizer)
    other = build_tiny_model(tokenizer, TinyModelConfig(seed=1))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_tiny_model_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tokenizer)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"hidden_size": 130}, "hidden_size"), ({"num_kv_heads": 3}, "num_kv_heads"), ({"num_layers": 0}, "num_layers")],
)
def test_tiny_config_validation_names_field(tokenizer, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_tiny_model(tokenizer, TinyModelConfig(**kwargs))


def test_load_tiny_and_local_directory_roundtrip(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path)
    ids = torch.tensor([loaded_tok(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-6)
    bf16, _ = load_model_and_tokenizer(tmp_path, dtype="bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_load_unknown_hub_id_offline_fails_fast_with_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="local directory"):
        load_model_and_tokenizer("sspo-tests/definitely-not-cached-model")
    assert time.perf_counter() - start < 10


def test_load_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        load_model_and_tokenizer("tiny", dtype="float8")
    with pytest.raises(ValueError, match="name_or_path"):
        load_model_and_tokenizer(str(tmp_path / "missing"))


def test_model_directory_round_trip_keeps_the_character_tokenizer(tmp_path):
    """A saved model directory (config.json of model_type qwen2 + our tokenizer) reloads losslessly:
    AutoTokenizer alone would rebuild a Qwen2Tokenizer that drops spaces and newlines."""
    model, tokenizer = load_model_and_tokenizer("tiny")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded_model, reloaded = load_model_and_tokenizer(str(tmp_path))
    text = "Tom has 3 apples.\n3+4=7. #### 7"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert len(reloaded(text)["input_ids"]) == len(text)
    assert reloaded.decode(reloaded(text)["input_ids"]) == text
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    torch.testing.assert_close(reloaded_model(ids).logits, model(ids).logits)


def test_the_4x_model_has_four_times_the_parameters_and_is_a_valid_model_name():
    from sspo.trainer.config import check_model_source

    small, _ = load_model_and_tokenizer("tiny")
    large, tok = load_model_and_tokenizer("tiny-4x")
    n_small, n_large = (sum(p.numel() for p in m.parameters()) for m in (small, large))
    assert 3.5 <= n_large / n_small <= 4.5 and large.config.hidden_size == 2 * small.config.hidden_size
    assert tok.vocab_size == build_char_tokenizer().vocab_size
    check_model_source("tiny-4x")  # accepted like "tiny"
