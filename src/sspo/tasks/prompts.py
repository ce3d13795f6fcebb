"""Prompt templates: turn a question into the text the policy is conditioned on.

* ``chat``  — the tokenizer's chat template with one user turn ``"{question}\\n{instruction}"``
  (``apply_chat_template(..., tokenize=False, add_generation_prompt=True)``);
* ``plain`` — ``"Question: {question}\\n{instruction}\\nAnswer:"`` for models without a chat template;
* ``raw``   — ``"{question}\\n"``, no instruction: for the tiny character-level model, which learns the
  synthetic task's ``… #### N`` format directly and gains nothing from an instruction it cannot read;
* ``auto``  — ``chat`` when the tokenizer has a chat template, else ``plain``.

The instruction is the problem's own when it has one (:attr:`Problem.instruction`; code tasks ask for a
fenced Python block, :data:`CODE_INSTRUCTION`), else :data:`DEFAULT_INSTRUCTION`
(:func:`problem_prompt`).
"""

from __future__ import annotations

from typing import Any

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = "Write your solution as one complete Python program in a ```python code block."
TEMPLATES = ("auto", "chat", "plain", "raw")


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (a Hugging Face tokenizer attribute)."""
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def format_prompt(
    question: str,
    tokenizer: Any = None,
    *,
    template: str = "auto",
    instruction: str = DEFAULT_INSTRUCTION,
) -> str:
    """The prompt text for ``question`` under ``template`` (one of :data:`TEMPLATES`)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; valid templates: {', '.join(TEMPLATES)}")
    if template == "auto":
        template = "chat" if has_chat_template(tokenizer) else "plain"
    if template == "raw":
        return f"{question}\n"
    content = f"{question}\n{instruction}" if instruction else question
    if template == "plain":
        return f"Question: {content}\nAnswer:"
    if not has_chat_template(tokenizer):
        raise ValueError("template 'chat' needs a tokenizer with a chat_template; use template='plain'")
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def problem_prompt(problem: Any, tokenizer: Any = None, *, template: str = "auto") -> str:
    """:func:`format_prompt` of ``problem.question`` with the problem's instruction (default: the math one)."""
    instruction = getattr(problem, "instruction", None)
    return format_prompt(problem.question, tokenizer, template=template,
                         instruction=DEFAULT_INSTRUCTION if instruction is None else instruction)  # fmt: skip
