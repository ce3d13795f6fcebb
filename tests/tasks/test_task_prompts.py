"""Prompt templates: chat (a real tokenizer with a chat template), plain, raw, auto."""

import pytest

from sspo.tasks import DEFAULT_INSTRUCTION, format_prompt

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer(chat_template=None):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    tokenizer.chat_template = chat_template
    return tokenizer


def test_chat_template_of_a_real_tokenizer():
    prompt = format_prompt("What is 2+3?", _tokenizer(CHAT_TEMPLATE))
    assert prompt == f"<|user|>What is 2+3?\n{DEFAULT_INSTRUCTION}<|end|><|assistant|>"
    assert "\\boxed{}" in DEFAULT_INSTRUCTION and "step by step" in DEFAULT_INSTRUCTION


def test_auto_falls_back_to_plain_without_a_chat_template():
    expected = f"Question: What is 2+3?\n{DEFAULT_INSTRUCTION}\nAnswer:"
    assert format_prompt("What is 2+3?", _tokenizer(None)) == expected
    assert format_prompt("What is 2+3?") == expected
    assert format_prompt("What is 2+3?", _tokenizer(CHAT_TEMPLATE), template="plain") == expected


def test_raw_and_custom_instruction():
    assert format_prompt("Tom has 3 apples.", template="raw") == "Tom has 3 apples.\n"
    assert format_prompt("Q", template="plain", instruction="") == "Question: Q\nAnswer:"
    assert format_prompt("Q", template="plain", instruction="Be brief.") == "Question: Q\nBe brief.\nAnswer:"


def test_errors_name_the_template():
    with pytest.raises(ValueError, match=r"unknown prompt template 'fancy'.*auto, chat, plain, raw"):
        format_prompt("Q", template="fancy")
    with pytest.raises(ValueError, match="chat_template"):
        format_prompt("Q", _tokenizer(None), template="chat")
