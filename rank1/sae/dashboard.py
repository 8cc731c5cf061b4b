"""Payloads of the SAE feature dashboard, from saved artifacts only (3.1's features, 3.3's explanations and
categories when they exist).

Index: one row per feature in columns (name, latent, density, maximum, activation mass, score, category,
explanation, a few top tokens), small enough for thousands of features: the list is searched, sorted and
filtered in the page. Pages (``feat_0000`` ...): ``page_size`` features each, loaded when one of them is
opened: top examples (token heatmaps), scoring samples by decile, histogram of the firing values, firing-value
deciles, and the decoder direction over the layers x projections grid (unit norm, signed).

A blank score, category or explanation is never left unexplained: the index holds, per feature, a code into
``reasons`` (why this feature has no score / no category / no explanation: 3.3 has not run, the feature was
not in its sample, it never fired, its explanation failed, its held-out set could not be scored), which the
list shows in the cell and totals in a footnote.
"""

from __future__ import annotations

from collections import Counter

import torch

from rank1.constants import PROJECTIONS
from rank1.topk import TopKResult, round_sig

SHOW_BINS = 40
EXPLAINER = "3.3.0 (3_lora_sae/3.3_autointerp/3.3.0_autointerp.py)"
CATEGORISER = "3.3.1 (3_lora_sae/3.3_autointerp/3.3.1_categorize.py)"
REASONS = [
    "",  # 0: the value is there
    f"not explained yet: run {EXPLAINER}, then 3.2 again",
    "not explained: 3.3.0 explained a sample of the features (--max_features) and this one was not drawn",
    "not explained: no activating example to explain",
    "not explained: the explanation step failed (its error is in 3.3.0's explanations.jsonl)",
    "not scored: the held-out examples lacked one of the two labels (activating / not), or 3.3.0 ran with "
    "--scorer none",
    f"no categories yet: run {CATEGORISER}, then 3.2 again",
    "not categorised: 3.3.1 gave this feature no category (it categorises explained features)",
]
NO_AUTOINTERP, NOT_SAMPLED, NEVER_FIRED, FAILED, NOT_SCORED, NO_CATEGORIES, NOT_CATEGORISED = range(1, 8)




def firing_histogram(res: TopKResult, f: int, bins: int = SHOW_BINS) -> dict[str, list]:
    """Counts of the firing values (zeros removed from the fine histogram of 3.1) in ``bins`` bins."""
    t = res.tensors
    fine = t["hist_fine_counts_SB"][f].clone()
    fine[0] -= res.tensors["hist_fine_counts_SB"][f].sum() - res.features[f]["firing_count"]  # the zeros
    lo, hi = float(t["min_S"][f]), float(t["max_S"][f])
    n = fine.shape[0]
    group = max(1, n // bins)
    counts = fine[: n // group * group].reshape(-1, group).sum(1)
    edges = torch.linspace(lo, hi, counts.shape[0] + 1)
    return {"edges": [round_sig(e) for e in edges.tolist()], "counts": counts.tolist()}


def _grid(w_dec_S: torch.Tensor, sites: list[dict], layers: list[int], projs: list[str]) -> list[list[float | None]]:
    unit = w_dec_S / w_dec_S.norm().clamp(min=1e-30)
    at = {(s["layer"], s["name"]): float(unit[i]) for i, s in enumerate(sites)}
    return [[round_sig(at[(la, p)], 3) if (la, p) in at else None for la in layers] for p in projs]


def blank_reasons(ex: dict | None, cat: dict, any_explained: bool, categories: dict | None) -> tuple[int, int, int]:
    """Codes into :data:`REASONS` of why a feature has no (explanation, score, category); 0 where it has one."""
    if ex is None:
        why = NOT_SAMPLED if any_explained else NO_AUTOINTERP
        expl = score = why
    else:
        status = ex.get("status")
        expl = 0 if ex.get("explanation") else NEVER_FIRED if status == "skipped" else FAILED
        score = 0 if ex.get("score") is not None else expl or NOT_SCORED
    category = 0 if cat.get("category") else NO_CATEGORIES if categories is None else NOT_CATEGORISED
    return expl, score, category


def build_payloads(res: TopKResult, latents: dict[str, torch.Tensor], explanations: dict[str, dict],
                   categories: dict | None, title: str, n_examples: int = 20, context: int = 24,
                   page_size: int = 32, token_bytes: dict[str, str] | None = None) -> tuple[dict, dict[str, dict]]:
    """(index payload, {page key: page payload}) for :func:`rank1.dashboard.write_dashboard`. ``token_bytes``
    (id -> hex, :func:`rank1.dashboard.token_bytes`) lets the page join tokens that hold part of a character."""
    sites = res.meta["sites"]
    layers = sorted({s["layer"] for s in sites})
    projs = [p for p in PROJECTIONS if any(s["name"] == p for s in sites)]
    assigned = (categories or {}).get("features", {})
    t = res.tensors
    cols: dict[str, list] = {k: [] for k in ("name", "latent", "density", "max", "mass", "score", "category",
                                              "subcategory", "explanation", "top", "why")}
    pages: dict[str, dict] = {}
    for f, feat in enumerate(res.features):
        name = feat["name"]
        ex = explanations.get(name, {})
        cat = assigned.get(name, {})
        why = blank_reasons(explanations.get(name), cat, bool(explanations), categories)
        top_ids = [int(i) for i in t["top_tokens_FKW"][f, :, t["top_tokens_FKW"].shape[2] // 2] if i >= 0]
        common = [res.vocab.get(i, "") for i, _ in Counter(top_ids).most_common(3)]
        for key, value in (("name", name), ("latent", feat["latent"]), ("density", round_sig(feat["density"])),
                           ("max", round_sig(feat["max"])), ("mass", round_sig(feat["activation_mass"])),
                           ("score", ex.get("score")), ("category", cat.get("category")),
                           ("subcategory", cat.get("subcategory")), ("explanation", ex.get("explanation") or ""),
                           ("top", common), ("why", list(why))):
            cols[key].append(value)
        key = f"feat_{f // page_size:04d}"
        page = pages.setdefault(key, {"features": {}, "vocab": set()})
        used: set[int] = page["vocab"]
        top = [res.example("top", f, (r,), context, used) for r in range(min(n_examples, t["top_index_FK"].shape[1]))]
        deciles = []
        for d in reversed(range(t["decile_index_FDN"].shape[1])):
            e = res.example("decile", f, (d, 0), context, used) if t["decile_index_FDN"].shape[2] else None
            if e is not None:
                deciles.append({"decile": d + 1, **e})
        pages[key]["features"][str(f)] = {
            "feature": f, "name": name, "latent": feat["latent"], "firing_count": feat["firing_count"],
            "density": feat["density"], "max": feat["max"], "mass": feat["activation_mass"],
            "explanation": ex.get("explanation"), "score": ex.get("score"), "category": cat.get("category"),
            "why": [REASONS[w] for w in why],
            "subcategory": cat.get("subcategory"), "top": [e for e in top if e is not None], "deciles": deciles,
            "hist": firing_histogram(res, f),
            "decile_edges": [round_sig(v) for v in t["decile_edges_FD1"][f].tolist()],
            "loadings": _grid(latents["W_dec_LS"][feat["latent"]], sites, layers, projs),
            "top_loadings": feat.get("loadings", [])}
    for page in pages.values():
        page["vocab"] = {str(i): res.vocab.get(i, "") for i in sorted(page["vocab"])}
        page["bytes"] = {k: v for k, v in (token_bytes or {}).items() if k in page["vocab"]}
    summary = res.meta.get("sae_summary", {})
    index = {"title": title, "run": res.meta.get("identity", {}).get("run", ""), "page_size": page_size,
             "n_tokens": res.meta.get("n_tokens", 0), "n_docs": res.meta.get("n_docs", 0),
             "d_sae": res.meta.get("d_sae", len(res.features)), "n_features": len(res.features),
             "k": res.meta.get("k"), "summary": summary, "layers": layers, "projections": projs,
             "categories": (categories or {}).get("categories", []), "has_scores": any(s is not None for s in
                                                                                       cols["score"]),
             "reasons": REASONS, "features": cols}
    return index, pages
