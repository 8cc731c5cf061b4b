"""Stage 3.3: what the SAE features are about, from saved artifacts only.

The explanations and categories come from 3.3.0 / 3.3.1 (the autointerp package); this module reads them:

- ``explanations.jsonl`` (written by :func:`rank1.autointerp.run.run_autointerp`): one record per feature
  with its ``name``, ``status``, ``explanation`` and held-out ``detection`` (balanced accuracy, or null);
- ``categories.json``: ``{"categories": [the top-level names], "features": {name: {"category": str,
  "subcategory": str | null}}}``.

:func:`category_densities` is the authors' "activation density" of a category: the sum of its features'
activations over every token of the store (activation mass), normalised to shares over the categorised
features; subcategory shares are within their category. Firing-count shares (how many tokens fire the
features) are given beside it; :func:`rank1.sae.plots.plot_donut` draws Figure 3 from them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.autointerp.categories import LEXICON_SCHEME, LexiconCategoriser
from rank1.autointerp.examples import build_examples
from rank1.autointerp.explainers import Explanation

EXPLAINER = "3_lora_sae/3.3_autointerp/3.3.0_autointerp.py"
CATEGORIZER = "3_lora_sae/3.3_autointerp/3.3.1_categorize.py"
DENSITIES = "3_lora_sae/3.3_autointerp/3.3.2_compute_activation_densities.py"
MEASURES = ("mass", "firing")
NO_SUBCATEGORY = "(none)"


class CategoryError(ValueError):
    """Explanations or categories missing or inconsistent with the features (the message says what to do)."""


def read_explanations(folder: str | Path, required: bool = False) -> dict[str, dict[str, Any]]:
    """{feature name: {feature, explanation, score, status}} from ``explanations.jsonl``, ``score`` being the
    held-out detection balanced accuracy (None when unscored); {} when absent (an error if ``required``)."""
    path = Path(folder) / K.AUTOINTERP_RESULTS
    if not path.is_file():
        if required:
            raise CategoryError(f"{path} is missing: explain the features first with {EXPLAINER}")
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CategoryError(f"{path}:{n}: not valid JSON ({e.msg}); rerun {EXPLAINER}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise CategoryError(f"{path}:{n}: each line must be an autointerp record with a string 'name'; "
                                f"rerun {EXPLAINER}")
        score = (rec.get("detection") or {}).get("balanced_accuracy")
        if score is not None and not isinstance(score, int | float):
            raise CategoryError(f"{path}:{n}: detection balanced_accuracy must be a number or null, got {score!r}")
        out[rec["name"]] = {"feature": rec["name"], "explanation": rec.get("explanation"), "score": score,
                            "status": rec.get("status")}
    return out


def read_categories(folder: str | Path, feature_names: list[str] | None = None,
                    required: bool = True) -> dict[str, Any] | None:
    """The categories file, checked: a list of names, every feature's category among them, and (given the
    feature names of 3.1) no feature that 3.1 did not collect."""
    path = Path(folder) / K.CATEGORIES_JSON
    if not path.is_file():
        if required:
            raise CategoryError(f"{path} is missing: categorise the features first with {CATEGORIZER}")
        return None
    try:
        data = read_json(path)
    except json.JSONDecodeError as e:
        raise CategoryError(f"{path} is not valid JSON ({e.msg}); rerun {CATEGORIZER}") from None
    names, feats = data.get("categories"), data.get("features")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names) \
            or not isinstance(feats, dict):
        raise CategoryError(f"{path} must hold 'categories' (a non-empty list of names) and 'features' (an object)")
    known = set(feature_names) if feature_names is not None else None
    for name, rec in feats.items():
        if known is not None and name not in known:
            raise CategoryError(f"{path}: feature {name!r} is not among the SAE features of 3.1; the categories "
                                f"belong to another SAE: rerun {CATEGORIZER}")
        if not isinstance(rec, dict) or rec.get("category") not in names:
            got = rec.get("category") if isinstance(rec, dict) else rec
            raise CategoryError(f"{path}: feature {name!r} has category {got!r}, not one of {names}")
        sub = rec.get("subcategory")
        if sub is not None and not isinstance(sub, str):
            raise CategoryError(f"{path}: feature {name!r} has a subcategory that is not a string or null: {sub!r}")
    return data


def category_densities(features: list[dict[str, Any]], categories: dict[str, Any]) -> dict[str, Any]:
    """Activation mass and firing count per category and subcategory (``features``: records of 3.1 with
    ``name``, ``activation_mass`` and ``firing_count``). Shares are over the categorised features; features
    without a category are reported apart (``uncategorised``)."""
    names = categories["categories"]
    assigned = categories["features"]
    out: dict[str, Any] = {"categories": {}, "uncategorised": {"n_features": 0, "mass": 0.0, "firing": 0}}
    for c in names:
        out["categories"][c] = {"n_features": 0, "mass": 0.0, "firing": 0, "subcategories": {}}
    for f in features:
        rec = assigned.get(f["name"])
        if rec is None:
            u = out["uncategorised"]
        else:
            cat = out["categories"][rec["category"]]
            cat["n_features"] += 1
            cat["mass"] += f["activation_mass"]
            cat["firing"] += f["firing_count"]
            u = cat["subcategories"].setdefault(rec.get("subcategory") or NO_SUBCATEGORY,
                                                {"n_features": 0, "mass": 0.0, "firing": 0})
        u["n_features"] += 1
        u["mass"] += f["activation_mass"]
        u["firing"] += f["firing_count"]
    totals = {m: sum(c[m] for c in out["categories"].values()) for m in MEASURES}
    if totals["mass"] <= 0:
        raise CategoryError("the categorised features have no activation mass (no categorised feature fires)")
    for c in out["categories"].values():
        for m in MEASURES:
            c[f"{m}_share"] = c[m] / totals[m] if totals[m] else 0.0
            for s in c["subcategories"].values():
                s[f"{m}_share_in_category"] = s[m] / c[m] if c[m] else 0.0
    out["totals"] = totals
    all_mass = totals["mass"] + out["uncategorised"]["mass"]
    out["uncategorised"]["mass_share_of_all"] = out["uncategorised"]["mass"] / all_mass if all_mass else 0.0
    out["definition"] = ("mass: sum over features of the category of each feature's activations over every token of "
                         "the store, as a share of all categorised features' mass (the authors' 'activation "
                         "density'); firing: the same with the number of tokens each feature fires on; subcategory "
                         "shares are within their category")
    return out


def feature_table(res_features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields of 3.1's feature records that the densities need."""
    return [{k: f[k] for k in ("name", "latent", "activation_mass", "firing_count")} for f in res_features]


def categorize(res, explanations_path: Path, categoriser, opt, concurrency: int = 1) -> dict[str, Any]:
    """The categories file of the explained features of ``res`` (3.1's top-k result): each feature whose
    explanation succeeded gets one of the paper's top-level categories from ``categoriser`` (lexicon or LLM,
    with :data:`rank1.autointerp.categories.PAPER_TOP_LEVEL_SCHEME`) and, as its subcategory, the lexicon
    category of its strong tokens (display name) when that lexicon category lies inside the chosen top-level
    category (always so for the lexicon categoriser; an LLM may pick a top-level category the lexicon would
    not, then the subcategory is null). ``opt`` (:class:`rank1.autointerp.run.AutointerpOptions`) rebuilds
    the examples 3.3.0 showed. Features whose categoriser failed are listed under ``errors``."""
    scheme = categoriser.scheme
    lexicon = LexiconCategoriser(LEXICON_SCHEME)
    index = {f["name"]: i for i, f in enumerate(res.features)}
    records = [json.loads(line) for line in explanations_path.read_text(encoding="utf-8").split("\n") if line.strip()]
    unknown = [r.get("name") for r in records if r.get("name") not in index]
    if unknown:
        raise CategoryError(f"{explanations_path} explains features that 3.1 did not collect ({unknown[:3]}...): it "
                            f"belongs to another SAE; rerun {EXPLAINER}")
    todo = [r for r in records if r.get("status") == "ok" and r.get("explanation")]

    def one(rec: dict[str, Any]) -> tuple[str, str | None, str | None, str | None]:
        ex = build_examples(res, index[rec["name"]], opt.n_examples, opt.window, opt.per_doc_cap, seed=opt.seed)
        expl = Explanation(rec["explanation"], rec.get("classification"), rec.get("reasoning") or "")
        sub, _ = lexicon.categorise(ex, expl)
        if isinstance(categoriser, LexiconCategoriser):  # the same strong tokens decide: map, do not recount
            top, err = (scheme.from_lexicon[sub], None) if sub is not None else (None, "no examples")
        else:
            top, err = categoriser.categorise(ex, expl)
        inside = sub is not None and top is not None and scheme.from_lexicon.get(sub) == top
        return rec["name"], top, LEXICON_SCHEME.names[sub] if inside else None, err

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = list(tqdm(pool.map(one, todo), total=len(todo), desc="categorise", unit="feature"))
    features = {name: {"category": top, "subcategory": sub} for name, top, sub, err in done if top is not None}
    errors = {name: err or "no category" for name, top, _, err in done if top is None}
    return {"categories": scheme.keys, "scheme": scheme.name,
            "subcategories": "the lexicon category of the feature's strong tokens (rank1/autointerp/lexicon.py), "
                             "kept when it lies inside the top-level category",
            "categoriser": categoriser.describe(), "n_explained": len(todo), "features": features, "errors": errors}
