"""A verifiable check of shown arithmetic work, for tasks whose solutions are chains of equations.

A completion such as ``"8+4=12. 12-3=9. #### 9"`` passes when

1. it shows at least one equation ``a ∘ b = c`` (non-negative integers, ``∘`` one of ``+ - * x ×``);
2. every equation is true: ``c = a ∘ b``;
3. the equations chain: the left operand of each equation after the first is the previous result;
4. the final answer (:func:`sspo.rewards.extract_final_answer`) equals the last result.

Why: with a final-answer reward alone, a small model's compensating slips ("8+3=12. 12+4=16") and
answers that do not follow from the work ("8+4=13. 13+3=15. #### 16") are rewarded like correct
derivations, and reinforcing them teaches wrong arithmetic. The check needs no reference solution
and no model, and runs in time linear in the text (one regular-expression scan).
"""

from __future__ import annotations

import re

from sspo.rewards.extract import extract_final_answer

_EQUATION_RE = re.compile(r"(\d{1,12})\s*([-+*x×])\s*(\d{1,12})\s*=\s*(\d{1,24})")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_APPLY["x"] = _APPLY["×"] = _APPLY["*"]


def work_is_consistent(text: str) -> bool:
    """True when ``text`` shows a true, chained chain of equations that ends in its final answer."""
    if not isinstance(text, str):
        return False
    previous = None
    for match in _EQUATION_RE.finditer(text):
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        if _APPLY[op](left, right) != result or (previous is not None and left != previous):
            return False
        previous = result
    if previous is None:
        return False
    answer = extract_final_answer(text)
    return answer is not None and answer.strip() == str(previous)
