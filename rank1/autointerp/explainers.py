"""Explainers: one interface, an LLM behind an OpenAI-compatible endpoint and a deterministic lexicon.

``explainer.explain(examples) -> Explanation`` with the authors' rating: 0 monosemantic, 1 broad but
consistent, 2 polysemantic. An explanation that could not be had (request failed, answer malformed)
comes back with ``error`` set and no text; the run records it and goes on.

The lexicon explainer (the offline default) reads the strong tokens of the shown examples: each example's
peak token (the token it was chosen for) and every token of its +-``window`` span at ``STRONG_LEVEL`` (5) or
more on the prompt's 0-10 scale (at least half of the strongest activation shown): what an LLM reading the
activation lists would see as "where it fires". With each token's lexicon category
(:mod:`rank1.autointerp.lexicon`):

- rating 0 (monosemantic) when one token string is at least ``MONO_SHARE`` (60%) of the strong tokens:
  ``"Wait" token (verification words)``;
- rating 1 (broad but consistent) when one category other than ``other`` holds at least ``BROAD_SHARE``
  (60%) of them: ``numbers: "7", "4", "9"``;
- rating 2 (polysemantic) otherwise: ``mixed: numbers ("7"), punctuation (".")``.

A feature that fires strongly on many different tokens around its peaks (a dense feature) is rated less
monosemantic than one whose peaks stand alone, whatever its peak tokens. A tie goes to the token or
category seen first in the (seeded) example order. The explanation has at most 10 words. The lexicon
explainer also states its claim as a predicate (the tokens or categories it says the feature fires on),
which the offline scorer tests on held-out examples; its category (the dominant one) is what the lexicon
categoriser reports.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from rank1.autointerp.client import ChatClient
from rank1.autointerp.examples import FeatureExamples, peak_value, scaled
from rank1.autointerp.lexicon import BY_KEY, normalise_token, token_categories
from rank1.autointerp.prompts import MAX_WORDS, AnswerError, explanation_messages, parse_explanation

MONO_SHARE = 0.6
BROAD_SHARE = 0.6
STRONG_LEVEL = 5


@dataclass
class Explanation:
    text: str | None
    classification: int | None  # 0 monosemantic, 1 broad but consistent, 2 polysemantic
    reasoning: str = ""
    error: str | None = None
    predicate: dict[str, list[str]] | None = None  # {"tokens": [...], "categories": [...]} (lexicon only)
    lexicon_category: str | None = None  # dominant category of the peaks (lexicon only)
    raw: str | None = None  # an answer that did not parse


class Explainer(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def explain(self, ex: FeatureExamples) -> Explanation: ...


@dataclass
class TokenStats:
    """The strong tokens of the shown examples: counts per token (normalised), per category and per (token,
    category) pair (one token string can sit in two categories: a newline of the template vs. of the text)."""

    n: int = 0
    tokens: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    pairs: Counter = field(default_factory=Counter)

    def category_of(self, token: str) -> str:
        """The category ``token`` has most often (the first seen on a tie)."""
        return max((c for t, c in self.pairs if t == token), key=lambda c: self.pairs[(token, c)])

    def tokens_of(self, category: str) -> list[str]:
        """Tokens seen in ``category``, most frequent there first."""
        return [t for (t, c), _ in self.pairs.most_common() if c == category]


def strong_token_stats(ex: FeatureExamples, level: int = STRONG_LEVEL) -> TokenStats:
    """Peak tokens and tokens at ``level`` or more on the 0-10 scale, over the shown spans of ``ex.top``."""
    stats = TokenStats()
    peak = peak_value(ex.top, ex.window)
    for w in ex.top:
        sl = w.span(ex.window)
        cats = token_categories(w.tokens)
        for i, a in zip(range(sl.start, sl.stop), scaled(w.acts[sl], peak), strict=True):
            if a >= level or i == w.center:
                tok = normalise_token(w.tokens[i])
                stats.n += 1
                stats.tokens[tok] += 1
                stats.categories[cats[i]] += 1
                stats.pairs[(tok, cats[i])] += 1
    return stats


def _quote(token: str) -> str:
    return json.dumps(token, ensure_ascii=False)


def _fit(words: list[str], limit: int = MAX_WORDS) -> str:
    """Join, dropping trailing items until the text has at most ``limit`` words."""
    while len(" ".join(words).split()) > limit and len(words) > 1:
        words = words[:-1]
    text = " ".join(words)
    return " ".join(text.split()[:limit])


def lexicon_explanation(stats: TokenStats) -> Explanation:
    if stats.n == 0:
        return Explanation(None, None, error="no examples to explain")
    (top_tok, n_tok), = stats.tokens.most_common(1)
    (top_cat, n_cat), = stats.categories.most_common(1)
    shares = ", ".join(f"{c} {k}/{stats.n}" for c, k in stats.categories.most_common())
    reasoning = f"strong tokens: {_quote(top_tok)} {n_tok}/{stats.n}; categories: {shares}"
    if n_tok >= MONO_SHARE * stats.n:
        cat = stats.category_of(top_tok)
        text = _fit([f"{_quote(top_tok)} token", f"({BY_KEY[cat].short})"])
        return Explanation(text, 0, reasoning, predicate={"tokens": [top_tok], "categories": []},
                           lexicon_category=cat)
    if n_cat >= BROAD_SHARE * stats.n and top_cat != "other":
        examples = stats.tokens_of(top_cat)[:3]
        text = _fit([f"{BY_KEY[top_cat].short}:", *[_quote(t) + "," for t in examples[:-1]], _quote(examples[-1])])
        return Explanation(text, 1, reasoning, predicate={"tokens": [], "categories": [top_cat]},
                           lexicon_category=top_cat)
    cats = [c for c, _ in stats.categories.most_common(2)]
    parts = [f"{BY_KEY[c].short} ({_quote(stats.tokens_of(c)[0])})" for c in cats]
    text = _fit(["mixed:", *[p + "," for p in parts[:-1]], parts[-1]])
    return Explanation(text, 2, reasoning, predicate={"tokens": [], "categories": cats}, lexicon_category=top_cat)


class LexiconExplainer:
    """Deterministic, offline: explains from the strong tokens' lexicon statistics (module docstring)."""

    def describe(self) -> dict[str, Any]:
        return {"kind": "lexicon", "mono_share": MONO_SHARE, "broad_share": BROAD_SHARE, "strong_level": STRONG_LEVEL}

    def explain(self, ex: FeatureExamples) -> Explanation:
        return lexicon_explanation(strong_token_stats(ex))


class LLMExplainer:
    """The authors' prompt (with the polarity fix) sent through a :class:`ChatClient`."""

    def __init__(self, client: ChatClient):
        self.client = client

    def describe(self) -> dict[str, Any]:
        return {"kind": "llm", **self.client.settings.describe()}

    def explain(self, ex: FeatureExamples) -> Explanation:
        done = self.client.complete(explanation_messages(ex))
        if done.text is None:
            return Explanation(None, None, error=f"request failed: {done.error}")
        try:
            text, cls, reasoning = parse_explanation(done.text)
        except AnswerError as e:
            return Explanation(None, None, error=f"malformed answer: {e}", raw=done.text[:2000])
        return Explanation(text, cls, reasoning)
