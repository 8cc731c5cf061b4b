"""Payloads of the LoRA activation dashboard, from saved artifacts only (top-k examples, adapter weights).

Index: the store summary, activation std per (layer, adapter), norms of A and B by layer, and |cos| across
layers for each vector that lives in a shared space. Per layer: each adapter's statistics, histogram,
quantiles and top examples of both polarities, with the token strings they use, and the cosines between
the layer's vectors that share a space (norms and across-layer cosines: :mod:`rank1.lora`):

- residual side (d_model): A of q, k, v, gate, up (they read the normed residual stream) and B of o, down
  (they write to it);
- MLP hidden side (d_ff): B of gate and up (they write the pre-activations), A of down (it reads the
  SwiGLU product).

Explanations: 2.3 runs before 2.2 (autointerp), so the explanations, ratings and held-out detection /
fuzzing scores reach the dashboard as one data file, ``data/explanations.js``, that the page loads when it
opens (a script, as every data file: ``fetch()`` is blocked on file:// pages). The dashboard is written with
a placeholder that says "run 2.2 to add explanations"; :func:`attach_explanations` replaces it from a
finished ``explanations.jsonl``, and both 2.2 (when it finishes, through :func:`refresh_after_autointerp`)
and 2.3 (when it runs after 2.2) call it, so whichever runs last leaves the dashboard current without
rebuilding it. The page searches features by name (layer, projection, polarity) and explanation text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import results_dir
from rank1.constants import PROJECTIONS
from rank1.dashboard import write_data_file
from rank1.lora import across_layers, cosine_matrix, factor_norms
from rank1.topk import TopKResult

log = logging.getLogger(__name__)

DASHBOARD_STAGE = "lora_dashboard"
EXPLANATIONS_KEY = "explanations"
NOT_YET = "no explanations yet: run 2.2 (2_lora_activation_interp/2.2_run_lora_autointerp.py) to add explanations"

RESIDUAL = (("q_proj", "A"), ("k_proj", "A"), ("v_proj", "A"), ("gate_proj", "A"), ("up_proj", "A"),
            ("o_proj", "B"), ("down_proj", "B"))
HIDDEN = (("gate_proj", "B"), ("up_proj", "B"), ("down_proj", "A"))
SIGN_NOTE = ("Sign convention: a rank-1 update B A is unchanged when A and B both flip sign, and the "
             "activation A\u00b7x flips with them. Everything here keeps the trained signs, the ones the "
             "activations use (a positive example has A\u00b7x > 0), so a signed cosine between two adapters "
             "is meaningful only together with the polarities of their features. The across-layer maps show "
             "|cos|, which does not depend on the convention.")


def _round(values: torch.Tensor, digits: int = 4) -> list:
    return [float(f"{v:.{digits}g}") if v == v else None for v in values.tolist()]


def _space(vectors: dict, layer: int, members) -> dict[str, Any]:
    have = [(p, ab) for p, ab in members if (layer, p) in vectors]
    if not have:
        return {"labels": [], "matrix": []}
    rows = torch.stack([vectors[(layer, p)][0 if ab == "A" else 1] for p, ab in have])
    return {"labels": [f"{p.removesuffix('_proj')} {ab}" for p, ab in have],
            "matrix": [_round(r, 3) for r in cosine_matrix(rows)]}


def _side(res: TopKResult, f: int, n_examples: int) -> dict[str, Any]:
    t = res.tensors
    out = []
    for r in range(min(n_examples, t["top_index_FK"].shape[1])):
        if t["top_index_FK"][f, r] < 0:
            break
        ids, acts = t["top_tokens_FKW"][f, r], t["top_acts_FKW"][f, r]
        keep = ids >= 0
        center = int(keep[:ids.shape[0] // 2].sum())
        out.append({"t": ids[keep].tolist(), "a": _round(acts[keep], 3), "c": center,
                    "v": float(t["top_value_FK"][f, r]), "d": int(t["top_doc_FK"][f, r]),
                    "p": int(t["top_pos_FK"][f, r])})
    feat = res.features[f]
    return {"name": feat["name"], "n_active": feat["n_active"], "threshold": feat["threshold"], "examples": out}


def build_payloads(res: TopKResult, vectors: dict, title: str, n_examples: int,
                   token_bytes: dict[str, str] | None = None) -> tuple[dict, dict[str, dict]]:
    """(index payload, {page key: layer payload}) for :func:`rank1.dashboard.write_dashboard`; the
    ``explanations`` page is the placeholder :func:`attach_explanations` replaces. ``token_bytes`` (id ->
    hex, :func:`rank1.dashboard.token_bytes`) lets the page join tokens that hold part of a character."""
    t = res.tensors
    sites = res.meta["sites"]
    layers = sorted({s["layer"] for s in sites})
    projs = [p for p in PROJECTIONS if any(s["name"] == p for s in sites)]
    site_of = {(s["layer"], s["name"]): i for i, s in enumerate(sites)}
    pages, keys = {}, {}
    for layer in layers:
        adapters, used = [], set()
        for p in projs:
            s = site_of.get((layer, p))
            if s is None:
                continue
            lo, hi = float(t["min_S"][s]), float(t["max_S"][s])
            bins = t["hist_counts_SB"].shape[1]
            pos, neg = _side(res, 2 * s, n_examples), _side(res, 2 * s + 1, n_examples)
            for side in (pos, neg):
                for ex in side["examples"]:
                    used.update(ex["t"])
            adapters.append({
                "proj": p, "scale": max(abs(lo), abs(hi), 1e-12),
                "stats": {"min": lo, "max": hi, "mean": float(t["mean_S"][s]), "std": float(t["std_S"][s])},
                "hist": {"edges": _round(torch.linspace(lo, hi, bins + 1)), "counts": t["hist_counts_SB"][s].tolist()},
                "quantiles": {"levels": _round(t["quantile_levels_Q"]), "values": _round(t["quantiles_SQ"][s])},
                "positive": pos, "negative": neg})
        key = f"layer_{layer:03d}"
        keys[str(layer)] = key
        vocab = {str(i): res.vocab.get(i, "") for i in sorted(used)}
        partial = {k: v for k, v in (token_bytes or {}).items() if k in vocab}
        pages[key] = {"layer": layer, "adapters": adapters, "vocab": vocab, "bytes": partial,
                      "cos_residual": _space(vectors, layer, RESIDUAL), "cos_hidden": _space(vectors, layer, HIDDEN)}
    std = [[float(t["std_S"][site_of[(la, p)]]) if (la, p) in site_of else None for p in projs] for la in layers]
    norms = {ab: [{"name": p.removesuffix("_proj"), "values": values} for p, values in by_proj.items()]
             for ab, by_proj in factor_norms(vectors, layers, projs).items()}
    cross = {}
    for p, ab in RESIDUAL + HIDDEN:
        m = across_layers(vectors, p, ab, layers) if len(layers) > 1 else None
        if m is not None:
            cross[f"{p.removesuffix('_proj')} {ab}"] = [_round(r.abs(), 3) for r in m]
    index = {"title": title, "run": res.meta.get("identity", {}).get("run", ""), "layers": layers, "pages": keys,
             "k": res.meta.get("k"), "n_adapters": len(sites),
             "store": {"n_tokens": res.meta.get("n_tokens", 0), "n_docs": res.meta.get("n_docs", 0)},
             "overview": {"projections": projs, "std": std}, "norms": norms, "cross_layer": cross,
             "sign_note": SIGN_NOTE, "features": [_feature_row(feat, sites) for feat in res.features]}
    pages[EXPLANATIONS_KEY] = {"available": False, "reason": NOT_YET}
    return index, pages


def _feature_row(feat: dict, sites: list[dict]) -> dict[str, Any]:
    site = sites[feat["site"]]
    return {"name": feat["name"], "layer": site["layer"], "proj": site["name"], "polarity": feat["polarity"]}


# ---------------------------------------------------------------- explanations, added after 2.2


def _score(rec: dict, method: str, scorer: str | None) -> dict[str, Any]:
    """A held-out score as {"v": balanced accuracy} or {"why": the reason there is none}."""
    if rec.get("status") != "ok":
        return {"why": "no explanation to score"}
    result = rec.get(method)
    if scorer in (None, "none") and not result:
        return {"why": "not scored: 2.2 ran with --scorer none"}
    if not result:
        return {"why": f"no {method} result"}
    if result.get("balanced_accuracy") is None:
        return {"why": f"not scored: {result.get('error') or 'no balanced accuracy'}"}
    return {"v": result["balanced_accuracy"], "n": result.get("n")}


def _why_not(rec: dict) -> str:
    errors = rec.get("errors") or {}
    if rec.get("status") == "skipped":
        return "nothing to explain: this polarity never fires"
    return "explanation failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items())


def explanations_payload(records: list[dict], config: dict[str, Any], source: str) -> dict[str, Any]:
    """What the page shows of 2.2's records: per feature name its explanation (or why there is none), rating,
    category and held-out detection / fuzzing scores (or why there is none)."""
    scorer = config.get("scorer")
    features = {}
    for r in records:
        ok = r.get("status") == "ok"
        features[r["name"]] = {"explanation": r.get("explanation") if ok else None,
                               "why": None if ok else _why_not(r), "rating": r.get("class_name") if ok else None,
                               "category": r.get("category") if ok else None,
                               "detection": _score(r, "detection", scorer), "fuzzing": _score(r, "fuzzing", scorer)}
    sampled = (config.get("max_features") or 0) > 0
    missing = (f"not explained: 2.2 explained a random sample of {len(records)} features (--max_features)"
               if sampled else "not in the autointerp results (they were made from another top-k artifact)")
    return {"available": True, "source": source, "explainer": config.get("explainer"), "scorer": scorer,
            "missing": missing, "features": features}


def attach_explanations(dashboard: str | Path, autointerp: str | Path) -> Path | None:
    """Replace the dashboard's ``data/explanations.js`` from the finished autointerp folder ``autointerp``;
    returns the file, or None (logged) when there is no dashboard or no finished autointerp yet."""
    dashboard, autointerp = Path(dashboard), Path(autointerp)
    if not (dashboard / K.DASHBOARD_INDEX).is_file():
        log.info("no LoRA dashboard in %s yet; 2.3 adds the explanations when it runs", dashboard)
        return None
    results = autointerp / K.AUTOINTERP_RESULTS
    if not results.is_file() or not (autointerp / K.CONFIG_JSON).is_file():
        log.info("no finished autointerp results in %s; the dashboard says to run 2.2", autointerp)
        return None
    # split on "\n" only: str.splitlines() also splits inside a record at U+2028 / U+2029
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").split("\n") if line.strip()]
    payload = explanations_payload(records, read_json(autointerp / K.CONFIG_JSON), str(autointerp))
    path = write_data_file(dashboard, EXPLANATIONS_KEY, payload)
    log.info("dashboard %s: explanations of %d features from %s", dashboard, len(records), autointerp)
    return path


def refresh_after_autointerp(kind: str, profile: str, run_name: str, autointerp: str | Path) -> Path | None:
    """After 2.2 (``kind`` 'lora'): add its explanations to the run's LoRA dashboard where one exists at the
    default place; other kinds have no LoRA dashboard (None)."""
    if kind != "lora":
        return None
    return attach_explanations(results_dir(profile, DASHBOARD_STAGE, run_name), autointerp)
