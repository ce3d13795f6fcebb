"""Fast path: plain numbers compared exactly, in pure Python, with bounded work.

A *plain number* is an integer, decimal or fraction (``a/b``, ``\\frac{a}{b}``), optionally signed,
with thousands separators, a currency sign, a percent sign, ``\\text{…}`` units, trailing unit
words (``18 dollars``, ``5 cm``) or a trailing period. Values compare as :class:`fractions.Fraction`,
so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` are equal. No ``eval``, no sympy; strings longer than
:data:`MAX_PLAIN_CHARS` are never converted.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_PLAIN_CHARS = 200
"""Longer strings are not plain numbers (keeps ``int()`` and the regexes cheap)."""

_MATH_DELIMITERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_REMOVE = ("\\$", "\\%", "\\!", "\\,", "\\;", "\\ ", "~", "$", "%", "°", "^{\\circ}", "^\\circ", "\\circ")
_TEXT_RE = re.compile(r"\\(?:text|mathrm|mbox|textbf|mathbf)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"(?<!\d)(\d{1,3})((?:,\d{3})+)(?![\d,])")
_DECIMAL = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_RE = re.compile(rf"(?P<num>{_DECIMAL})(?:\s*/\s*(?P<den>{_DECIMAL}))?")
_LATEX_FRAC_RE = re.compile(
    r"(?P<sign>[-+]?)\\[dt]?frac\s*\{\s*(?P<num>[^{}]+?)\s*\}\s*\{\s*(?P<den>[^{}]+?)\s*\}"
)
_UNIT_TAIL_RE = re.compile(r"^(?P<value>.*?\d\.?)\s+(?P<unit>[A-Za-z][A-Za-z ./]*)$")
_NOT_UNITS = frozenset({"pi", "e", "i", "x", "y", "n", "sqrt", "or", "and", "to"})


def normalize_number_text(text: str) -> str:
    """Strip math delimiters, currency, percent, degree signs, units and trailing periods."""
    s = text.strip()
    for left, right in _MATH_DELIMITERS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
    s = _TEXT_RE.sub(lambda m: " " + m.group(1) + " ", s)
    for token in _REMOVE:
        s = s.replace(token, " ")
    s = " ".join(s.split()).rstrip(".").strip()
    s = _THOUSANDS_RE.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    unit = _UNIT_TAIL_RE.match(s)
    if unit and not set(unit.group("unit").lower().replace(".", " ").split()) & _NOT_UNITS:
        s = unit.group("value").rstrip(".")
    return s


def parse_number(text: str) -> Fraction | None:
    """Exact value of a plain number, or ``None`` when ``text`` is not one (never raises)."""
    if not isinstance(text, str) or len(text) > MAX_PLAIN_CHARS:
        return None
    s = normalize_number_text(text)
    if not s:
        return None
    match = _LATEX_FRAC_RE.fullmatch(s)
    if match:
        num, den = _decimal(match.group("num")), _decimal(match.group("den"))
        if num is None or den is None or den == 0:
            return None
        value = num / den
        return -value if match.group("sign") == "-" else value
    match = _NUMBER_RE.fullmatch(s)
    if not match:
        return None
    num = _decimal(match.group("num"))
    if match.group("den") is None:
        return num
    den = _decimal(match.group("den"))
    if num is None or den is None or den == 0:
        return None
    return num / den


def _decimal(text: str) -> Fraction | None:
    text = text.strip()
    if not re.fullmatch(_DECIMAL, text):
        return None
    return Fraction(text.rstrip(".") if text.endswith(".") else text)
