"""Category schemes and categorisers: which kind of feature an explained feature is.

A :class:`CategoryScheme` is a set of category keys with display names, the descriptions an LLM is shown,
and where each lexicon category lands. Two schemes:

- :data:`LEXICON_SCHEME` (Figure 2's enrichment): the lexicon's nine categories, named as the paper names
  them where the meaning matches ("Mathematical Operators", "Answer and Solution Markers", "Instruction
  and Procedural Markers");
- :data:`PAPER_TOP_LEVEL_SCHEME` (stage 3's Figure 3): the paper's seven top-level categories, verbatim;
  the lexicon maps onto them through :data:`rank1.autointerp.lexicon.LEXICON_TO_TOP_LEVEL`.

``categoriser.categorise(examples, explanation) -> (category key or None, error or None)``: the lexicon
categoriser takes the dominant lexicon category of the feature's strong tokens (peaks and tokens at half
the peak or more; whatever wrote the explanation); the LLM categoriser shows the explanation and the peak
tokens and asks for one key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rank1.autointerp.client import ChatClient
from rank1.autointerp.examples import FeatureExamples
from rank1.autointerp.explainers import Explanation, strong_token_stats
from rank1.autointerp.lexicon import CATEGORIES, LEXICON_TO_TOP_LEVEL, PAPER_TOP_LEVEL
from rank1.autointerp.prompts import AnswerError, category_messages, parse_category


@dataclass(frozen=True)
class CategoryScheme:
    name: str
    names: dict[str, str]  # key -> display name
    descriptions: dict[str, str]  # key -> what an LLM is told
    from_lexicon: dict[str, str]  # lexicon category -> key

    @property
    def keys(self) -> list[str]:
        return list(self.names)


LEXICON_SCHEME = CategoryScheme(
    "lexicon", {c.key: c.name for c in CATEGORIES}, {c.key: f"{c.name}: {c.description}" for c in CATEGORIES},
    {c.key: c.key for c in CATEGORIES})

PAPER_TOP_LEVEL_SCHEME = CategoryScheme(
    "paper_top_level", {k: k for k in PAPER_TOP_LEVEL},
    {"computational_operations": "arithmetic and algebraic operations being carried out (operators, calculations)",
     "symbolic_manipulation": "rewriting symbols and expressions (variables, equations, LaTeX, substitutions)",
     "variable_value_tracking": "numbers, quantities and the values of variables being tracked",
     "reasoning_flow_control": "steering the reasoning: planning, verification, backtracking ('Wait', 'let me check')",
     "domain_specific_patterns": "domain content and text patterns (problem words, formatting, chat template)",
     "relational_logical_operators": "comparisons and logic (equals, less than, if, therefore, and, or)",
     "result_formulation": "stating results and answers ('Answer:', 'final', 'boxed')"},
    dict(LEXICON_TO_TOP_LEVEL))

SCHEMES = {s.name: s for s in (LEXICON_SCHEME, PAPER_TOP_LEVEL_SCHEME)}


class Categoriser(Protocol):
    scheme: CategoryScheme

    def describe(self) -> dict[str, Any]: ...

    def categorise(self, ex: FeatureExamples, explanation: Explanation) -> tuple[str | None, str | None]: ...


class LexiconCategoriser:
    def __init__(self, scheme: CategoryScheme = LEXICON_SCHEME):
        self.scheme = scheme

    def describe(self) -> dict[str, Any]:
        return {"kind": "lexicon", "scheme": self.scheme.name}

    def categorise(self, ex: FeatureExamples, explanation: Explanation) -> tuple[str | None, str | None]:
        cat = explanation.lexicon_category
        if cat is None:
            stats = strong_token_stats(ex)
            if not stats.n:
                return None, "no examples"
            cat = stats.categories.most_common(1)[0][0]
        return self.scheme.from_lexicon[cat], None


class LLMCategoriser:
    def __init__(self, client: ChatClient, scheme: CategoryScheme = LEXICON_SCHEME):
        self.client, self.scheme = client, scheme

    def describe(self) -> dict[str, Any]:
        return {"kind": "llm", "scheme": self.scheme.name, **self.client.settings.describe()}

    def categorise(self, ex: FeatureExamples, explanation: Explanation) -> tuple[str | None, str | None]:
        if not explanation.text:
            return None, "no explanation"
        done = self.client.complete(category_messages(explanation.text, ex, self.scheme.descriptions))
        if done.text is None:
            return None, f"request failed: {done.error}"
        try:
            return parse_category(done.text, self.scheme.keys), None
        except AnswerError as e:
            return None, f"malformed answer: {e}"
