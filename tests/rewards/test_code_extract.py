"""The program in a completion: the last fenced Python block, else the whole text."""

import pytest

from sspo.rewards.code import extract_code, program_text


def test_plain_text_is_the_program():
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_last_python_block_wins():
    text = "First try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f(): return 2\n```\nDone."
    assert extract_code(text) == "def f(): return 2"


@pytest.mark.parametrize("info", ["", "py", "Python", "python3", "py3"])
def test_python_info_strings(info):
    assert extract_code(f"x\n```{info}\nprint(1)\n```\n") == "print(1)"


def test_blocks_in_other_languages_are_skipped():
    text = "```python\ndef f(): return 1\n```\nRun it:\n```bash\npython f.py\n```\nOutput:\n```text\n1\n```"
    assert extract_code(text) == "def f(): return 1"


def test_only_non_python_blocks_means_whole_text():
    text = "```bash\nls\n```"
    assert extract_code(text) == text


def test_unclosed_final_fence_runs_to_the_end():
    assert extract_code("Here:\n```python\ndef f():\n    return 3") == "def f():\n    return 3"


def test_longer_fences_and_inner_backticks():
    text = "````python\ns = '```'\n```\nstill code\n````\n"
    assert extract_code(text) == "s = '```'\n```\nstill code"


def test_tilde_fences_and_indented_fences():
    assert extract_code("~~~python\na = 1\n~~~") == "a = 1"
    assert extract_code("  ```python\n  a = 1\n  ```") == "  a = 1"


def test_indented_code_keeps_its_indentation():
    assert extract_code("```python\nclass A:\n    def f(self):\n        return 1\n```") == (
        "class A:\n    def f(self):\n        return 1"
    )


def test_long_text_is_linear():
    text = "```python\n" + "x = 1\n" * 200_000 + "```\n" + "``` not a fence\n" * 50_000
    assert extract_code(text).count("x = 1") == 200_000


def test_not_a_string_is_a_caller_error():
    with pytest.raises(ValueError, match="str"):
        extract_code(None)


def test_program_text_joins_prefix_and_code():
    assert program_text("```python\n    return 1\n```", "def f():\n") == "def f():\n    return 1"
    assert program_text("y = 2", "x = 1") == "x = 1\ny = 2"
    assert program_text("y = 2") == "y = 2"
