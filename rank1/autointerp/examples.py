"""What an explainer and a scorer see of one feature, cut from a :class:`rank1.topk.TopKResult`.

- ``top``: the examples an explanation is written from: the feature's top-k examples in rank order, at
  most ``per_doc_cap`` per document (0: no cap), the first ``n_examples`` of them, then shuffled (seeded
  by the feature, so a rerun sends the same prompt);
- ``active``: held-out activating examples (part 1's decile samples, disjoint from the top-k), taken round
  robin over the deciles so every activation level is represented, at most ``n_score_active``;
- ``quiet``: held-out non-activating examples (windows where the feature stays below its threshold), at
  most ``n_score_quiet``. Part 1 samples them with the whole +-context window quiet, which a dense feature
  (active on a third of all tokens, say) rarely has; when there are fewer than wanted (``n_score_quiet``,
  else part 1's ``n_random``), quiet +-``window`` spans cut from the held-out activating windows (away
  from their example token) fill up. A feature with no quiet context at all (a dense feature: the lexicon
  rates such features, so leaving them unscored would select on density) takes its negatives from its own
  low deciles instead: spans whose values stay at or below the upper edge of its k-th lowest decile of active
  values, the smallest k (at most :data:`LOW_DECILES`) that gives any (``quiet_level`` = k).

Values are the feature's ``v``: for a negative-polarity feature the strength of the negative direction
(``-x``), so every feature reads "bigger is stronger". Windows keep the full context of the top-k
artifact (the lexicon needs it to know which chat turn a token is in); :meth:`Window.span` gives the
``+-window`` tokens around the peak that prompts show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rank1.topk import N_DECILES, TopKResult

LOW_DECILES = 5  # a dense feature's negatives stay within its lower half of active values at most


@dataclass
class Window:
    tokens: list[str]
    acts: list[float]  # feature values v (strength in the feature's direction)
    center: int  # index of the example's token (the peak for a top example)
    doc: int = -1

    def span(self, window: int) -> slice:
        return slice(max(0, self.center - window), min(len(self.tokens), self.center + window + 1))


@dataclass
class FeatureExamples:
    feature: int  # row of the TopKResult
    meta: dict[str, Any]  # the feature's record of features.json (name, layer, polarity, ...)
    top: list[Window]
    active: list[Window] = field(default_factory=list)
    quiet: list[Window] = field(default_factory=list)
    threshold: float | None = None  # a token is active above this value (the top-k artifact's threshold)
    window: int = 8  # tokens shown on each side of the peak
    quiet_level: int = 0  # 0: negatives below the threshold; k: a dense feature's, below its k-th decile edge

    @property
    def name(self) -> str:
        return str(self.meta.get("name", f"feature {self.feature}"))

    @property
    def polarity(self) -> int:
        return int(self.meta.get("polarity", 1))


def _window(res: TopKResult, kind: str, f: int, idx: tuple[int, ...], doc: int) -> Window:
    tokens, acts, center = res.window(kind, f, *idx)
    return Window(tokens, acts, center, doc)


def build_examples(res: TopKResult, f: int, n_examples: int = 10, window: int = 8, per_doc_cap: int = 0,
                   n_score_active: int = 0, n_score_quiet: int = 0, seed: int = 0) -> FeatureExamples:
    """The examples of feature ``f`` (see the module docstring); ``n_score_*`` 0 means all there are."""
    top_ix = res.tensors["top_index_FK"][f].tolist()
    top_doc = res.tensors["top_doc_FK"][f].tolist()
    per_doc: dict[int, int] = {}
    top = []
    for rank, (ix, doc) in enumerate(zip(top_ix, top_doc, strict=True)):
        if ix < 0 or len(top) >= n_examples:
            break
        if per_doc_cap and per_doc.get(doc, 0) >= per_doc_cap:
            continue
        per_doc[doc] = per_doc.get(doc, 0) + 1
        top.append(_window(res, "top", f, (rank,), doc))
    rng = np.random.default_rng([seed, f])
    top = [top[i] for i in rng.permutation(len(top))]

    active = []
    if "decile_index_FDN" in res.tensors:
        d_ix = res.tensors["decile_index_FDN"][f]  # [D, N]
        d_doc = res.tensors["decile_doc_FDN"][f]
        for j in range(d_ix.shape[1]):
            for d in reversed(range(min(N_DECILES, d_ix.shape[0]))):  # strongest decile first
                if int(d_ix[d, j]) >= 0:
                    active.append(_window(res, "decile", f, (d, j), int(d_doc[d, j])))
    quiet = []
    if "random_index_FN" in res.tensors:
        r_ix, r_doc = res.tensors["random_index_FN"][f], res.tensors["random_doc_FN"][f]
        quiet = [_window(res, "random", f, (j,), int(r_doc[j])) for j in range(len(r_ix)) if int(r_ix[j]) >= 0]
    thr = _threshold(res, f)
    random_slots = res.tensors["random_index_FN"].shape[1] if "random_index_FN" in res.tensors else 0
    want = n_score_quiet or random_slots
    if len(quiet) < want and thr is not None:
        quiet += quiet_spans(active, thr, window, want - len(quiet))
    quiet_level = 0
    if not quiet and want and "decile_edges_FD1" in res.tensors:
        quiet, quiet_level = low_decile_spans(active, res.tensors["decile_edges_FD1"][f].tolist(), window, want)
    if n_score_active:
        active = active[:n_score_active]
    if n_score_quiet:
        quiet = quiet[:n_score_quiet]
    return FeatureExamples(f, res.features[f], top, active, quiet, thr, window, quiet_level)


def low_decile_spans(windows: list[Window], edges: list[float], window: int, n: int) -> tuple[list[Window], int]:
    """Negatives of a feature with no quiet span (a dense one): spans of held-out windows whose values stay at or
    below the upper edge of the feature's own k-th lowest decile of active values, for the smallest k in
    1..:data:`LOW_DECILES` that gives any; returns (spans, k), or ([], 0). Detection then asks whether the
    explanation tells the feature's strong activity from its weakest."""
    for k in range(1, min(LOW_DECILES, len(edges) - 1) + 1):
        if np.isfinite(edges[k]) and (spans := quiet_spans(windows, float(edges[k]), window, n)):
            return spans, k
    return [], 0


def quiet_spans(windows: list[Window], thr: float, window: int, n: int) -> list[Window]:
    """Up to ``n`` non-activating contexts cut from held-out windows: in each window, the first position
    (farthest from its example first) whose +-``window`` span lies inside the window, leaves the example's
    token out, and stays at or below ``thr`` throughout; one per window."""
    out = []
    for w in windows:
        if len(out) >= n:
            break
        L = len(w.tokens)
        for c in sorted(range(window, L - window), key=lambda c: -abs(c - w.center)):
            if abs(c - w.center) <= window:
                break
            if max(w.acts[c - window:c + window + 1]) <= thr:
                out.append(Window(w.tokens, w.acts, c, w.doc))
                break
    return out


def _threshold(res: TopKResult, f: int) -> float | None:
    t = res.features[f].get("threshold")
    if t is None and "threshold_F" in res.tensors:
        t = float(res.tensors["threshold_F"][f])
    return None if t is None or not np.isfinite(t) else float(t)


def scaled(values: list[float], peak: float) -> list[int]:
    """Activations on the authors' 0-10 scale: ``round(10 v / peak)``, values in the opposite direction
    (v < 0) shown as 0."""
    if peak <= 0:
        return [0] * len(values)
    return [int(round(10 * max(0.0, v) / peak)) for v in values]


def peak_value(windows: list[Window], window: int) -> float:
    """The largest value shown in ``windows`` (the 10 of the 0-10 scale)."""
    return max((max(w.acts[w.span(window)], default=0.0) for w in windows), default=0.0)
