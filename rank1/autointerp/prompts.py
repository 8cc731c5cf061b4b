"""Prompts an LLM answers in JSON, and the parsers that turn an answer into values or an error.

The explanation prompt follows the authors' (up to 10 shuffled examples, +-8 tokens around the peak,
activations scaled 0-10 within the feature, tokens at 1 or more on that scale listed, an explanation of at
most 10 words, a 0 / 1 / 2 rating, a JSON answer) with their flaw fixed: a negative-polarity feature is
shown as the strength of its negative direction (tokens pushing the other way show 0) and the prompt says
so. The scoring prompts follow EleutherAI's delphi: detection (does the feature fire anywhere in this
text?) and fuzzing (are the marked tokens the ones it fires on?), several examples per request.

A parser returns the value or raises :class:`AnswerError` (the answer is recorded as an error, counted,
and the run goes on).
"""

from __future__ import annotations

import json
from typing import Any

from rank1.autointerp.examples import FeatureExamples, Window, peak_value, scaled

Messages = list[dict[str, str]]
SYSTEM = ("You are an interpretability researcher. You study features of a language model: numbers computed "
          "at every token of a text, which are large on some tokens and small on others.")
CLASSES = {0: "monosemantic", 1: "broad but consistent", 2: "polysemantic"}
MAX_WORDS = 10


class AnswerError(ValueError):
    """An LLM answer that does not parse (no JSON object, a field missing or out of range)."""


def _text(tokens: list[str], marks: set[int]) -> str:
    out = []
    for i, t in enumerate(tokens):
        t = t.replace("\n", "\\n")
        out.append(f"<<{t}>>" if i in marks else t)
    return "".join(out)


def polarity_note(ex: FeatureExamples) -> str:
    if ex.polarity < 0:
        return ("This feature is the NEGATIVE direction of a signed activation: every number below is the strength "
                "of the negative activation (how far below zero it goes); tokens where the activation is positive "
                "show 0.")
    return "Every number below is the strength of the feature's activation."


def explanation_messages(ex: FeatureExamples) -> Messages:
    peak = peak_value(ex.top, ex.window)
    blocks = []
    for i, w in enumerate(ex.top, 1):
        sl = w.span(ex.window)
        tokens, acts = w.tokens[sl], scaled(w.acts[sl], peak)
        listed = ", ".join(f"{json.dumps(t)} {a}" for t, a in zip(tokens, acts, strict=True) if a >= 1)
        blocks.append(f"Example {i}: {_text(tokens, {w.center - sl.start})}\nActivations: {listed or 'none'}")
    user = (
        f"Below are {len(ex.top)} text excerpts (in random order) on which a feature activates strongly. In each "
        f"excerpt the token where the feature peaks is marked <<like this>>. After each excerpt, the tokens with "
        f"a notable activation are listed with their activation on a 0-10 scale (10 = the strongest activation "
        f"of this feature in these excerpts). {polarity_note(ex)}\n\n" + "\n\n".join(blocks) + "\n\n"
        f"Explain in at most {MAX_WORDS} words what the feature responds to, and classify it: 0 = monosemantic "
        f"(one specific, clear concept or token), 1 = broad but consistent (one broader theme that covers the "
        f"excerpts), 2 = polysemantic (several unrelated patterns).\n"
        'Answer with a JSON object only: {"explanation": "...", "classification": 0, "reasoning": "..."}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def json_object(answer: str) -> dict[str, Any]:
    """The first JSON object in ``answer`` (code fences and surrounding prose are skipped)."""
    dec = json.JSONDecoder()
    for i, ch in enumerate(answer):
        if ch == "{":
            try:
                obj, _ = dec.raw_decode(answer[i:])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    raise AnswerError("no JSON object in the answer")


def parse_explanation(answer: str) -> tuple[str, int, str]:
    """(explanation, classification 0/1/2, reasoning) from an answer to :func:`explanation_messages`."""
    obj = json_object(answer)
    text = obj.get("explanation")
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("the answer has no 'explanation' string")
    cls = obj.get("classification")
    if isinstance(cls, str) and cls.strip().isdigit():
        cls = int(cls.strip())
    if isinstance(cls, bool) or not isinstance(cls, int) or cls not in CLASSES:
        raise AnswerError(f"'classification' must be 0, 1 or 2, got {cls!r}")
    reasoning = obj.get("reasoning", "")
    return text.strip(), cls, reasoning if isinstance(reasoning, str) else json.dumps(reasoning)


def category_messages(explanation: str, ex: FeatureExamples, scheme: dict[str, str]) -> Messages:
    """Ask for one category of ``scheme`` (key -> description) for a feature's explanation."""
    peaks = ", ".join(json.dumps(w.tokens[w.center]) for w in ex.top[:10])
    options = "\n".join(f"- {k}: {d}" for k, d in scheme.items())
    user = (f'A feature of a language model was explained as: "{explanation}". The tokens it peaks on include: '
            f"{peaks}.\n\nPick the one category that fits it best:\n{options}\n\n"
            'Answer with a JSON object only: {"category": "<one of the keys above>"}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_category(answer: str, keys: list[str]) -> str:
    value = json_object(answer).get("category")
    if isinstance(value, str):
        for k in keys:
            if value.strip().lower() == k.lower():
                return k
    raise AnswerError(f"'category' must be one of {keys}, got {value!r}")


def detection_messages(explanation: str, windows: list[Window], window: int) -> Messages:
    texts = "\n".join(f"Example {i}: {_text(w.tokens[w.span(window)], set())}" for i, w in enumerate(windows, 1))
    user = (f'A feature of a language model was explained as: "{explanation}". Some of the {len(windows)} '
            f"excerpts below contain a token on which the feature activates, the others do not.\n\n{texts}\n\n"
            "For each example in order, answer 1 if the feature activates somewhere in it, else 0.\n"
            f'Answer with a JSON object only: {{"answers": [{", ".join(["0"] * len(windows))}]}} (one 0 or 1 per '
            "example)")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def fuzzing_messages(explanation: str, items: list[tuple[Window, list[int]]], window: int) -> Messages:
    """``items``: (window, indices of the tokens to mark, relative to the full window)."""
    lines = []
    for i, (w, marks) in enumerate(items, 1):
        sl = w.span(window)
        lines.append(f"Example {i}: {_text(w.tokens[sl], {m - sl.start for m in marks})}")
    user = (f'A feature of a language model was explained as: "{explanation}". In each excerpt below some tokens '
            "are marked <<like this>>. In some excerpts the marked tokens are the ones where the feature activates; "
            "in the others they were chosen at random.\n\n" + "\n".join(lines) + "\n\n"
            "For each example in order, answer 1 if the marked tokens are the ones the explanation describes, else "
            f'0.\nAnswer with a JSON object only: {{"answers": [{", ".join(["0"] * len(items))}]}} (one 0 or 1 per '
            "example)")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_answers(answer: str, n: int) -> list[int]:
    """The list of ``n`` zeros and ones of a detection or fuzzing answer."""
    values = json_object(answer).get("answers")
    if not isinstance(values, list) or len(values) != n:
        raise AnswerError(f"'answers' must be a list of {n} values, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, str) and v.strip() in ("0", "1"):
            v = int(v.strip())
        if isinstance(v, bool):
            v = int(v)
        if v not in (0, 1):
            raise AnswerError(f"'answers' must hold 0 or 1, got {v!r}")
        out.append(int(v))
    return out
