"""Coarse classes of tokens in reasoning traces, for "where in a trace does this matter" summaries."""

from __future__ import annotations

# Checked in this order; the first match names the class.
TOKEN_CLASSES = ("wait", "answer_marker", "digit", "operator", "newline", "other")
ANSWER_MARKERS = {"answer", "answer:", "<|im_start|>", "<|im_end|>", "think"}
OPERATORS = {"+", "-", "×", "*", "/", "÷", "=", "<", ">"}


def token_class(text: str) -> str:
    """``wait`` (a "Wait" self-check), ``answer_marker`` (turn markers, "Answer"), ``digit`` (has a digit),
    ``operator`` (+ - × / = ...), ``newline``, else ``other``."""
    word = text.strip().lower()
    if word.startswith("wait"):
        return "wait"
    if word in ANSWER_MARKERS:
        return "answer_marker"
    if any(ch.isdigit() for ch in text):
        return "digit"
    if word in OPERATORS:
        return "operator"
    if "\n" in text:
        return "newline"
    return "other"
