"""The program in a completion: its last fenced Python block, or the whole text when it has none.

A fence is a line of three or more backticks (or tildes), indented by at most three spaces, as in
Markdown. Blocks whose info string is empty or a Python name (``python``, ``py``, ``python3``, any
case) count; blocks in other languages (``bash``, ``text``, ...) do not. An opening fence that is
never closed (a completion cut off by the token limit) runs to the end of the text. One pass over
the lines: linear time whatever the text.
"""

from __future__ import annotations

import re

PYTHON_INFO = frozenset({"", "python", "py", "python3", "py3"})
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$")


def extract_code(completion: str) -> str:
    """The last fenced Python block of ``completion`` (without the fences), else the whole text."""
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a str, got {type(completion).__name__}")
    last: list[str] | None = None
    block: list[str] | None = None
    fence, keep = "", False
    for line in completion.split("\n"):
        if block is None:
            match = _FENCE_RE.match(line)
            if match:
                fence, keep, block = match.group(1), match.group(2).lower() in PYTHON_INFO, []
            continue
        stripped = line.strip()
        if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "" and line[:4].strip():
            if keep:
                last = block
            block = None
            continue
        block.append(line)
    if block is not None and keep:  # unclosed final fence
        last = block
    return completion if last is None else "\n".join(last)
