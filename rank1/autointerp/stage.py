"""The autointerp stage of a run (2.2 for LoRA features, 2.7 for MLP neurons): one config, one driver.

Reads ``results/<profile>/<kind>_topk/<run>/`` (checked to come from the run named), builds the explainer,
scorer and categoriser the config asks for, and writes ``results/<profile>/<kind>_autointerp/<run>/``
through :func:`rank1.autointerp.run.run_autointerp`. The profile's ``[autointerp]`` table holds the
defaults (tiny: lexicon + offline; paper: an LLM endpoint).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rank1 import constants as K
from rank1.artifacts import public_config
from rank1.autointerp.categories import SCHEMES, LexiconCategoriser, LLMCategoriser
from rank1.autointerp.client import ChatClient, LLMSettings
from rank1.autointerp.explainers import LexiconExplainer, LLMExplainer
from rank1.autointerp.run import AutointerpError, AutointerpOptions, run_autointerp
from rank1.autointerp.scorers import LLMScorer, OfflineScorer
from rank1.config import cache_dir, option, results_dir
from rank1.models import num_layers
from rank1.runs import RunOptions, check_same_identity
from rank1.store import check_writable
from rank1.topk import TopKResult

log = logging.getLogger(__name__)

EXPLAINERS = ("lexicon", "llm")
SCORERS = ("offline", "llm", "none")


@dataclass
class AutointerpConfig(RunOptions):
    topk: str | None = option("top-k folder (default: results/<profile>/<kind>_topk/<run>)")
    out: str | None = option("output folder (default: results/<profile>/<kind>_autointerp/<run>)")
    explainer: str = option("lexicon (offline, deterministic) | llm (an OpenAI-compatible endpoint)", "lexicon")
    scorer: str = option("held-out scoring: offline (lexicon) | llm | none", "offline")
    categoriser: str = option("feature categories: lexicon | llm", "lexicon")
    categories: str = option(f"category scheme: {' | '.join(SCHEMES)}", "lexicon")
    n_examples: int = option("top examples an explanation is written from (shuffled)", 10)
    window: int = option("tokens shown on each side of an example's peak", 8)
    per_doc_cap: int = option("at most this many shown examples per document (0: no cap)", 0)
    n_score_active: int = option("held-out activating examples scored per feature (0: all of part 1's)", 0)
    n_score_quiet: int = option("held-out non-activating examples scored per feature (0: all)", 0)
    score_batch: int = option("examples per scoring request (LLM scorer)", 10)
    max_features: int = option("explain a seeded random sample of this many features (0: all)", 0)
    seed: int = option("seed of example order, fuzzing marks and the feature sample", 0)
    max_failed_share: float = option("fail the run (exit 2, after writing its records) when more than this share "
                                     "of the attempted features failed (skipped ones not counted); a rerun of the "
                                     "same command retries the failed ones. Not a setting: changing it recomputes "
                                     "nothing", 0.1)
    llm_base_url: str = option(f"OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (empty: "
                               f"${K.ENV_LLM_BASE_URL})", "")
    llm_model: str = option(f"model name the endpoint serves (empty: ${K.ENV_LLM_MODEL})", "")
    llm_auth_env: str = option("name of the environment variable that holds the API key", "OPENAI_API_KEY")
    llm_concurrency: int = option("LLM requests in flight", 8)
    llm_max_retries: int = option("retries of a request (connection errors, 429, 5xx) before the run stops", 5)
    llm_retry_backoff: float = option("seconds before the first retry (doubles each time)", 1.0)
    llm_timeout: float = option("seconds per request", 120.0)
    llm_temperature: float = option("sampling temperature (negative: not sent, the model's default)", 0.0)
    llm_max_tokens: int = option("answer tokens per request", 300)
    llm_token_limit_field: str = option("request field of --llm_max_tokens: max_tokens | max_completion_tokens "
                                        "(OpenAI's reasoning models)", "max_tokens")
    llm_cache: bool = option("cache answers under <cache>/autointerp (a rerun sends no request)", True)
    overwrite: bool = option("recompute even if finished results exist", False)

    def __post_init__(self):
        for name, value, allowed in (("explainer", self.explainer, EXPLAINERS), ("scorer", self.scorer, SCORERS),
                                     ("categoriser", self.categoriser, EXPLAINERS),
                                     ("categories", self.categories, tuple(SCHEMES))):
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {list(allowed)}, got {value!r}")
        if self.llm_token_limit_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(f"--llm_token_limit_field must be max_tokens or max_completion_tokens, got "
                             f"{self.llm_token_limit_field!r}")
        if self.score_batch < 1 or self.llm_concurrency < 1 or self.llm_max_retries < 0:
            raise ValueError("need --score_batch >= 1, --llm_concurrency >= 1 and --llm_max_retries >= 0")
        AutointerpOptions(**self._option_values(1))  # the same checks as the library

    def _option_values(self, concurrency: int) -> dict:
        return {"n_examples": self.n_examples, "window": self.window, "per_doc_cap": self.per_doc_cap,
                "n_score_active": self.n_score_active, "n_score_quiet": self.n_score_quiet, "seed": self.seed,
                "concurrency": concurrency, "max_features": self.max_features,
                "max_failed_share": self.max_failed_share}

    @property
    def uses_llm(self) -> bool:
        return "llm" in (self.explainer, self.scorer, self.categoriser)

    def options(self) -> AutointerpOptions:
        return AutointerpOptions(**self._option_values(self.llm_concurrency if self.uses_llm else 1))

    def llm_settings(self) -> LLMSettings:
        return LLMSettings(base_url=self.llm_base_url or os.environ.get(K.ENV_LLM_BASE_URL, ""),
                           model=self.llm_model or os.environ.get(K.ENV_LLM_MODEL, ""),
                           auth_env=self.llm_auth_env, concurrency=self.llm_concurrency,
                           max_retries=self.llm_max_retries, retry_backoff=self.llm_retry_backoff,
                           timeout=self.llm_timeout, temperature=self.llm_temperature, max_tokens=self.llm_max_tokens,
                           token_limit_field=self.llm_token_limit_field)


def build_components(cfg: AutointerpConfig):
    """(explainer, scorer or None, categoriser) as ``cfg`` asks; one LLM client shared by all three."""
    client = ChatClient(cfg.llm_settings(), cache_dir() / K.AUTOINTERP_CACHE if cfg.llm_cache else None) \
        if cfg.uses_llm else None
    scheme = SCHEMES[cfg.categories]
    explainer = LLMExplainer(client) if cfg.explainer == "llm" else LexiconExplainer()
    scorer = {"llm": lambda: LLMScorer(client, cfg.score_batch, cfg.seed), "offline": lambda: OfflineScorer(cfg.seed),
              "none": lambda: None}[cfg.scorer]()
    categoriser = LLMCategoriser(client, scheme) if cfg.categoriser == "llm" else LexiconCategoriser(scheme)
    return explainer, scorer, categoriser


def run_stage(cfg: AutointerpConfig, kind: str, topk_stage: str | None = None, out_stage: str | None = None,
              made_by: str | None = None, after: Callable[[str, Path], object] | None = None) -> Path:
    """Explain the ``kind`` ('lora' | 'mlp' | 'sae') features of the run; returns the output folder. The
    features are read from ``results/<profile>/<topk_stage>/<run>`` (default ``<kind>_topk``, made by
    ``made_by``) and the results written to ``<out_stage>`` (default ``<kind>_autointerp``). ``after(run name,
    output folder)`` runs once the results are written (the LoRA dashboard of 2.3 picks up the explanations)."""
    run = cfg.resolve_run()
    src = Path(cfg.topk) if cfg.topk else results_dir(cfg.profile, topk_stage or f"{kind}_topk", run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, out_stage or K.AUTOINTERP_STAGE.format(kind=kind),
                                                    run.name)
    res = TopKResult.load(src, made_by=made_by) if made_by else TopKResult.load(src)
    check_same_identity(run.identity(), res.meta.get("identity") or {}, f"top-k examples {src}")
    if res.meta.get("kind", kind) != kind:
        raise AutointerpError(f"{src} holds top-k examples of {res.meta['kind']!r} features; this step explains "
                              f"{kind!r} features (pass the {kind} top-k folder with --topk)")
    check_writable(out.parent if not out.exists() else out)
    explainer, scorer, categoriser = build_components(cfg)
    record = {**public_config(cfg), "kind": kind, "topk": str(src), "identity": res.meta.get("identity"),
              "store_key": res.meta.get("store_key"), "corpus": res.meta.get("corpus"),
              "n_tokens": res.meta.get("n_tokens"), "n_layers": _n_layers(res, run.model_id)}
    out = run_autointerp(res, out, explainer, scorer, categoriser, cfg.options(), record, cfg.overwrite)
    if after is not None:
        after(run.name, out)
    return out


def _n_layers(res: TopKResult, model_id: str) -> int | None:
    """Decoder layers of the model (what layer bins divide), else the highest layer the features name + 1."""
    try:
        return num_layers(model_id)
    except OSError:
        layers = [f["layer"] for f in res.features if "layer" in f]
        return max(layers) + 1 if layers else None
