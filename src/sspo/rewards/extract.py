"""Final-answer extraction from a model completion.

Order (first that yields an answer wins):

1. the last balanced ``\\boxed{…}`` (or ``\\fbox{…}``, or ``\\boxed 5``);
2. the rest of the line after the last ``####``;
3. the last "answer is …" / "answer: …" phrase, or a line starting with ``A: …``;
4. the last number in the text.

Every step does work bounded by fixed caps, whatever the length of the text: markers are found with
``str.rfind`` (linear), brace matching stops after :data:`MAX_ANSWER_CHARS` characters, phrase and
number searches only look at the tail of the text, and a number longer than
:data:`MAX_NUMBER_CHARS` is refused rather than cut.
"""

from __future__ import annotations

import re

MAX_ANSWER_CHARS = 1000
"""Longest final answer returned; a longer ``\\boxed{…}``/``####`` answer is skipped as unusable."""
MAX_NUMBER_CHARS = 100
"""Longest number (digits, separators, sign) that the last-number rule accepts."""
MAX_BRACE_DEPTH = 64
"""Deeper nesting inside ``\\boxed{…}`` is treated as unbalanced."""
_MAX_BOX_TRIES = 8
_PHRASE_WINDOW = 4000
_NUMBER_WINDOW = 400

_BOX_MARKERS = ("\\boxed", "\\fbox")
_PHRASE_RE = re.compile(r"answer\s*(?:is|:|=)\s*:?[ \t]*([^\n]+)", re.IGNORECASE)
_A_LINE_RE = re.compile(r"(?:^|\n)[ \t]*A[ \t]*:[ \t]*([^\n]+)")
_SENTENCE_END_RE = re.compile(r"(?<=[^\s.])\.(?:\s|$)")
_NUMBER_RE = re.compile(r"(?:(?<![\w)\]])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_NUMBER_CHARS = frozenset("0123456789,.-/")


def extract_final_answer(text: str) -> str | None:
    """Return the final answer of ``text`` as a stripped string, or ``None`` when there is none."""
    if not isinstance(text, str) or not text:
        return None
    for finder in (_last_boxed, _last_hashes, _answer_phrase, _last_number):
        answer = finder(text)
        if answer:
            return answer
    return None


def _last_boxed(text: str) -> str | None:
    end = len(text)
    for _ in range(_MAX_BOX_TRIES):
        start = max(text.rfind(marker, 0, end) for marker in _BOX_MARKERS)
        if start < 0:
            return None
        content = _boxed_content(text, start)
        if content:
            return content
        end = start
    return None


def _boxed_content(text: str, start: int) -> str | None:
    """Content of the box whose marker starts at ``start``; ``None`` if unbalanced or too long."""
    pos = start + (6 if text.startswith("\\boxed", start) else 5)
    limit = min(len(text), pos + MAX_ANSWER_CHARS + 2)
    while pos < limit and text[pos] == " ":
        pos += 1
    if pos >= limit:
        return None
    if text[pos] != "{":
        if text[pos - 1] != " ":  # e.g. \boxedfoo: not a box
            return None
        match = re.match(r"[^\s$]+", text[pos:limit])
        return match.group().rstrip(".") if match else None
    depth = 0
    for i in range(pos, limit):
        char = text[i]
        if char == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return None
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : i].strip() or None
    return None


def _last_hashes(text: str) -> str | None:
    start = text.rfind("####")
    if start < 0:
        return None
    rest = text[start + 4 : start + 4 + MAX_ANSWER_CHARS + 1].lstrip("# \t")
    line = rest.split("\n", 1)[0].strip()
    if len(line) > MAX_ANSWER_CHARS:
        return None
    return line or None


def _answer_phrase(text: str) -> str | None:
    window = text[-_PHRASE_WINDOW:]
    best: re.Match[str] | None = None
    for pattern in (_PHRASE_RE, _A_LINE_RE):
        for match in pattern.finditer(window):
            if best is None or match.start(1) > best.start(1):
                best = match
    if best is None:
        return None
    phrase = best.group(1).strip()
    sentence_end = _SENTENCE_END_RE.search(phrase)
    if sentence_end:
        phrase = phrase[: sentence_end.start()]
    return phrase.strip() or None


def _last_number(text: str) -> str | None:
    offset = max(0, len(text) - _NUMBER_WINDOW)
    window = text[offset:]
    last: re.Match[str] | None = None
    for last in _NUMBER_RE.finditer(window):  # noqa: B007 - we want the final match
        pass
    if last is None:
        return None
    if last.start() == 0 and offset > 0 and text[offset - 1] in _NUMBER_CHARS:
        return None  # the number started before the window: too long to be an answer
    number = last.group()
    if len(number) > MAX_NUMBER_CHARS:
        return None
    return number
