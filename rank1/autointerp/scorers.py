"""Held-out scoring of explanations (EleutherAI delphi's detection and fuzzing), LLM and offline.

Every example here is held out: part 1's decile samples and non-activating windows are disjoint from the
top-k examples an explanation is written from. A dense feature without any quiet span is scored against
spans from its own low deciles (:mod:`rank1.autointerp.examples`), so no feature goes unscored for its
density; each detection result says where its negatives came from (``negatives``).

- Detection: the activating held-out examples (label 1) and the non-activating windows (label 0), each shown
  as +-``window`` tokens without marks; the scorer says whether the feature fires anywhere in it. Score:
  balanced accuracy (the mean of the hit rate on each label), so the 1:1 mix does not matter.
- Fuzzing: every activating held-out example twice, once with its active tokens marked (value above the
  feature's activation threshold; label 1) and once with as many other tokens of the window marked at
  random (label 0; seeded); the scorer says whether the marks are the ones the explanation describes.
  Score: balanced accuracy.

``scorer.score(examples, explanation) -> {"detection": {...}, "fuzzing": {...}}``; a method that could
not be scored carries ``error``.

The offline scorer tests the explanation's predicate: the tokens and categories it names. The lexicon
explainer states its predicate; for any other explanation it is read from the text: strings in double
quotes are tokens, category cues ("number", "operator", "verif", ...; :data:`lexicon.CATEGORY_CUES`)
are categories. A token matches when its normalised text is a named token or its lexicon category a named
category. Detection says "fires" when a shown token matches; fuzzing says "right marks" when at least half
of the marked tokens match. An explanation that names nothing predicts "no" everywhere (chance, 0.5).
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from rank1.autointerp.client import ChatClient
from rank1.autointerp.examples import FeatureExamples, Window
from rank1.autointerp.explainers import Explanation
from rank1.autointerp.lexicon import CATEGORY_CUES, normalise_token, token_categories
from rank1.autointerp.prompts import AnswerError, detection_messages, fuzzing_messages, parse_answers

DENSE_NEGATIVES = "low deciles"  # a feature without quiet spans is scored against its weakest activity
QUOTED_RE = re.compile(r'"([^"]+)"|“([^”]+)”')


class Scorer(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def score(self, ex: FeatureExamples, explanation: Explanation) -> dict[str, dict[str, Any]]: ...


def balanced_accuracy(y_true: list[int], y_pred: list[int]) -> float | None:
    """Mean of the per-label recall; None unless both labels occur."""
    if len(set(y_true)) < 2:
        return None
    return float(balanced_accuracy_score(y_true, y_pred))


def detection_items(ex: FeatureExamples) -> list[tuple[Window, int]]:
    return [(w, 1) for w in ex.active] + [(w, 0) for w in ex.quiet]


def fuzzing_items(ex: FeatureExamples, seed: int = 0) -> list[tuple[Window, list[int], int]]:
    """(window, marked token indices, label) pairs: the active tokens of the span, and as many inactive ones
    drawn at random. Where more than half the span is active (a dense feature), both sides mark as many
    tokens as there are inactive ones (the active ones drawn at random too); a span with no inactive token
    is left out."""
    rng = np.random.default_rng([seed, ex.feature, 2])
    thr = ex.threshold if ex.threshold is not None else 0.0
    items = []
    for w in ex.active:
        sl = range(*w.span(ex.window).indices(len(w.tokens)))
        active = [i for i in sl if w.acts[i] > thr] or [w.center]
        inactive = [i for i in sl if i not in active]
        k = min(len(active), len(inactive))
        if k == 0:
            continue
        right = active if k == len(active) else sorted(int(i) for i in rng.choice(active, size=k, replace=False))
        wrong = sorted(int(i) for i in rng.choice(inactive, size=k, replace=False))
        items += [(w, right, 1), (w, wrong, 0)]
    return items


def _result(y_true: list[int], y_pred: list[int], **extra: Any) -> dict[str, Any]:
    out = {"balanced_accuracy": balanced_accuracy(y_true, y_pred), "n": len(y_true),
           "n_positive": int(sum(y_true)), **extra}
    if out["balanced_accuracy"] is None:
        out["error"] = "needs examples of both labels"
    return out


def negatives_of(ex: FeatureExamples) -> dict[str, Any]:
    """Where the detection negatives came from: below the feature's threshold, or (a dense feature) from its own
    low deciles (:func:`rank1.autointerp.examples.low_decile_spans`)."""
    return {"n": len(ex.quiet), "source": f"low decile {ex.quiet_level}" if ex.quiet_level else "below threshold"}


def parse_predicate(text: str) -> dict[str, list[str]]:
    """Tokens (double-quoted strings) and categories (cue words) an explanation's text names."""
    tokens = [_unescape(a or b) for a, b in QUOTED_RE.findall(text)]
    low = text.lower()
    cats = [k for k, cues in CATEGORY_CUES.items() if any(c in low for c in cues)]
    return {"tokens": [normalise_token(t) for t in tokens], "categories": cats}


def _unescape(quoted: str) -> str:
    """A quoted token as the text it names (the prompts show a newline as \\n)."""
    try:
        return json.loads(f'"{quoted}"')
    except json.JSONDecodeError:
        return quoted


class OfflineScorer:
    """Scores an explanation's predicate on the held-out examples with the lexicon (module docstring)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> dict[str, Any]:
        return {"kind": "offline", "seed": self.seed, "dense_negatives": DENSE_NEGATIVES}

    def score(self, ex: FeatureExamples, explanation: Explanation) -> dict[str, dict[str, Any]]:
        if not explanation.text:
            return {m: {"error": "no explanation"} for m in ("detection", "fuzzing")}
        pred = explanation.predicate or parse_predicate(explanation.text)
        tokens, cats = set(pred.get("tokens", [])), set(pred.get("categories", []))

        def matches(w: Window) -> list[bool]:
            c = token_categories(w.tokens)
            return [normalise_token(t) in tokens or k in cats for t, k in zip(w.tokens, c, strict=True)]

        det = detection_items(ex)
        det_pred = [int(any(matches(w)[w.span(ex.window)])) for w, _ in det]
        fuzz = fuzzing_items(ex, self.seed)
        fuzz_pred = []
        for w, marks, _ in fuzz:
            m = matches(w)
            fuzz_pred.append(int(2 * sum(m[i] for i in marks) >= len(marks)))
        return {"detection": _result([y for _, y in det], det_pred, negatives=negatives_of(ex)),
                "fuzzing": _result([y for *_, y in fuzz], fuzz_pred)}


class LLMScorer:
    """Detection and fuzzing prompts sent through a :class:`ChatClient`, ``batch`` examples per request in a
    seeded random order; a batch whose answer does not parse is left out and counted."""

    def __init__(self, client: ChatClient, batch: int = 10, seed: int = 0):
        self.client, self.batch, self.seed = client, batch, seed

    def describe(self) -> dict[str, Any]:
        return {"kind": "llm", "batch": self.batch, "seed": self.seed, "dense_negatives": DENSE_NEGATIVES,
                **self.client.settings.describe()}

    def _ask(self, items: list, build, ex: FeatureExamples, salt: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, ex.feature, salt])
        items = [items[i] for i in rng.permutation(len(items))]
        y_true, y_pred, failed, errors = [], [], 0, []
        for start in range(0, len(items), self.batch):
            chunk = items[start:start + self.batch]
            done = self.client.complete(build(chunk))
            try:
                if done.text is None:
                    raise AnswerError(f"request failed: {done.error}")
                answers = parse_answers(done.text, len(chunk))
            except AnswerError as e:
                failed += len(chunk)
                errors.append(str(e))
                continue
            y_true += [it[-1] for it in chunk]
            y_pred += answers
        out = _result(y_true, y_pred, n_failed=failed)
        if errors:
            out["error"] = f"{len(errors)} batch(es) unanswered: {errors[0]}"
        return out

    def score(self, ex: FeatureExamples, explanation: Explanation) -> dict[str, dict[str, Any]]:
        if not explanation.text:
            return {m: {"error": "no explanation"} for m in ("detection", "fuzzing")}
        text, win = explanation.text, ex.window
        det = self._ask(detection_items(ex), lambda c: detection_messages(text, [w for w, _ in c], win), ex, 1)
        det["negatives"] = negatives_of(ex)
        fuzz = self._ask(fuzzing_items(ex, self.seed),
                         lambda c: fuzzing_messages(text, [(w, m) for w, m, _ in c], win), ex, 3)
        return {"detection": det, "fuzzing": fuzz}
