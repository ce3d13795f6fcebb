"""Final-answer extraction order and the plain-number fast path."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo.rewards import extract_final_answer, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so x = 3 and \\boxed{5}. Then \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("nested \\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}"),
        ("space form \\boxed 42.", "42"),
        ("\\fbox{7} is it", "7"),
        ("boxed beats hashes #### 3 \\boxed{4}", "4"),
        ("16-3-4=9 eggs\n#### 18", "18"),
        ("#### 1 then\n#### 2,125\n", "2,125"),
        ("We get 7. The answer is 42. Check 5", "42"),
        ("Final answer: $\\frac{\\pi}{2}$", "$\\frac{\\pi}{2}$"),
        ("work 3\nA: 12 apples\n", "12 apples"),
        ("first 3, then 4.5 and finally -2", "-2"),
        ("ratio was 3/4", "3/4"),
        ("5-3=2", "2"),
        ("total 1,234,567 items", "1,234,567"),
        ("unbalanced \\boxed{3 so 12", "12"),
    ],
)
def test_extraction_order(text, expected):
    assert extract_final_answer(text) == expected


def test_last_balanced_box_wins_over_an_unbalanced_later_one():
    assert extract_final_answer("\\boxed{8} and then \\boxed{oops") == "8"


@pytest.mark.parametrize("text", ["", "no digits here", "\x00" * 50, "\ud800" * 10, "{" * 1000, None, 17])
def test_no_answer(text):
    assert extract_final_answer(text) is None


def test_number_longer_than_the_cap_is_refused_not_truncated():
    assert extract_final_answer("9" * 1_000_000) is None
    assert extract_final_answer("x " + "9" * 99) == "9" * 99


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", Fraction(42)),
        ("-7", Fraction(-7)),
        ("1,234", Fraction(1234)),
        ("$1,234.50", Fraction(246_900, 200)),
        ("\\$18", Fraction(18)),
        ("50%", Fraction(50)),
        ("50\\%", Fraction(50)),
        ("18 dollars", Fraction(18)),
        ("3.5 hours per day", Fraction(7, 2)),
        ("12\\text{ cm}", Fraction(12)),
        ("90^\\circ", Fraction(90)),
        ("5.", Fraction(5)),
        ("0.50", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\dfrac{3}{4}", Fraction(-3, 4)),
        ("$7$", Fraction(7)),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text",
    ["x", "5x", "2 pi", "\\sqrt{2}", "1,2", "(0, 1]", "3/0", "1e5", "1" * 300, "", "5 x", "2^{10}"],
)
def test_not_a_plain_number(text):
    assert parse_number(text) is None


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_formatted_integers_round_trip(n):
    for text in (f"{n:,}", f"${n:,}", f"{n}%", f"{n:,} dollars", f"{n}."):
        assert parse_number(text) == n, text


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=99))
def test_decimals_equal_by_value(whole, cents):
    decimal = f"{whole:,}.{cents:02d}"
    assert parse_number(decimal) == Fraction(whole * 100 + cents, 100)
    assert parse_number(f"{whole * 100 + cents}/100") == parse_number(decimal)
