"""Payloads of the LoRA activation dashboard, from saved artifacts only (top-k examples, adapter weights).

Index: the store summary, activation std per (layer, adapter), norms of A and B by layer, and |cos| across
layers for each vector that lives in a shared space. Per layer: each adapter's statistics, histogram,
quantiles and top examples of both polarities, with the token strings they use, and the cosines between
the layer's vectors that share a space (norms and across-layer cosines: :mod:`rank1.lora`):

- residual side (d_model): A of q, k, v, gate, up (they read the normed residual stream) and B of o, down
  (they write to it);
- MLP hidden side (d_ff): B of gate and up (they write the pre-activations), A of down (it reads the
  SwiGLU product).
"""

from __future__ import annotations

from typing import Any

import torch

from rank1.constants import PROJECTIONS
from rank1.lora import across_layers, cosine_matrix, factor_norms
from rank1.topk import TopKResult

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
    return {"n_active": feat["n_active"], "threshold": feat["threshold"], "examples": out}


def build_payloads(res: TopKResult, vectors: dict, title: str, n_examples: int) -> tuple[dict, dict[str, dict]]:
    """(index payload, {page key: layer payload}) for :func:`rank1.dashboard.write_dashboard`."""
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
        pages[key] = {"layer": layer, "adapters": adapters, "vocab": vocab,
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
             "sign_note": SIGN_NOTE}
    return index, pages
