"""Autointerp: explain, categorise and score features from their top-k examples (stage 2 part 2, stage 3).

Entry point: :func:`run_autointerp` (a :class:`rank1.topk.TopKResult` or its folder, an explainer, a scorer,
a categoriser, :class:`AutointerpOptions`). Pieces:

- ``examples``: the windows an explainer and a scorer see of a feature;
- ``lexicon``: the fixed token categories and their mapping to the paper's category names;
- ``prompts``: LLM prompts and the parsers of their JSON answers;
- ``client``: cached, retrying, concurrency-bounded chat completions from an OpenAI-compatible endpoint;
- ``explainers`` / ``categories`` / ``scorers``: LLM and offline implementations behind one interface each;
- ``run``: the resumable driver; ``stage``: the 2.2 / 2.7 config and driver; ``analysis`` and ``figures``:
  class shares, LoRA vs MLP, Figure 2.
"""

from rank1.autointerp.categories import (
    LEXICON_SCHEME,
    PAPER_TOP_LEVEL_SCHEME,
    SCHEMES,
    Categoriser,
    CategoryScheme,
    LexiconCategoriser,
    LLMCategoriser,
)
from rank1.autointerp.client import ChatClient, EndpointError, LLMSettings
from rank1.autointerp.examples import FeatureExamples, Window, build_examples
from rank1.autointerp.explainers import Explainer, Explanation, LexiconExplainer, LLMExplainer
from rank1.autointerp.lexicon import CATEGORIES, CATEGORY_KEYS, LEXICON_TO_TOP_LEVEL, PAPER_TOP_LEVEL, token_categories
from rank1.autointerp.run import AutointerpError, AutointerpOptions, run_autointerp
from rank1.autointerp.scorers import LLMScorer, OfflineScorer, Scorer

__all__ = [
    "CATEGORIES", "CATEGORY_KEYS", "LEXICON_SCHEME", "LEXICON_TO_TOP_LEVEL", "PAPER_TOP_LEVEL",
    "PAPER_TOP_LEVEL_SCHEME", "SCHEMES", "AutointerpError", "AutointerpOptions", "Categoriser", "CategoryScheme",
    "ChatClient", "EndpointError", "Explainer", "Explanation", "FeatureExamples", "LLMCategoriser", "LLMExplainer",
    "LLMScorer", "LLMSettings", "LexiconCategoriser", "LexiconExplainer", "OfflineScorer", "Scorer", "Window",
    "build_examples", "run_autointerp", "token_categories",
]
