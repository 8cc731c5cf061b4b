"""Feature pages: what each rank-1 direction reads, writes and does, joined from the stages' saved artifacts.

One page per adapter x polarity (``L3_o_proj_positive``) and one per SAE latent (``latent_0061``):

- reads: top and decile contexts (token ids and values), the site's activation histogram, firing density,
  explanation with its held-out detection / fuzzing scores (2.2), and the random-direction control's scores at
  the same site and polarity (2.6) for scale;
- writes: where B lives; for ``o_proj`` / ``down_proj`` (residual writers) the logit lens of B
  (:mod:`rank1.report.lens`, with its sign convention) and cos(B, unembedding of the tokens the feature fires
  on); for every adapter the cosines of its B with the other vectors of its layer that share B's space, beside
  the chance level of |cos| in that dimension;
- does: ablation KL with its CI and rank among adapters (1.0), steering KL onset in natural units with the
  random-direction control's (4.0), attribution share (4.1), the SAE latents that load on it most (3.1).

Every value is copied from an artifact (rounded to 4 significant digits); a section whose stage has not run
says which script makes it. :func:`build_pages` is pure given :class:`Artifacts`; :mod:`rank1.report.pages`
reads the files and writes the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rank1.constants import PROJECTIONS
from rank1.interventions import random_abs_cos
from rank1.lora import Vectors, cosine_matrix
from rank1.report.lens import Unembedding, promoted
from rank1.sae import top_loadings
from rank1.topk import TopKResult, round_sig

RESIDUAL_WRITERS = ("o_proj", "down_proj")
B_SPACE = {
    "q_proj": "the query space of the attention heads (n_heads x head_dim): B changes what each head looks for; "
              "it does not live in the residual stream",
    "k_proj": "the key space of the key/value heads: B changes how each position is found by the queries; it does "
              "not live in the residual stream",
    "v_proj": "the value space of the key/value heads: B changes what attention moves, which reaches the residual "
              "stream only through o_proj; it does not live in the residual stream",
    "o_proj": "the residual stream (d_model): B is added to it wherever the feature fires",
    "gate_proj": "the MLP's hidden space (d_ff, before the SiLU gate): B changes which hidden units open; it does "
                 "not live in the residual stream",
    "up_proj": "the MLP's hidden space (d_ff, the linear branch): B changes the hidden units' values; it does not "
               "live in the residual stream",
    "down_proj": "the residual stream (d_model): B is added to it wherever the feature fires",
}
LENS_NOTE = ("Logit lens: W_U (g * B), g the final norm's weight, later layers ignored. The adapter adds s a B "
             "(s > 0 the RSLoRA scale, a the scalar activation), so when this feature fires (a {sign} 0) the "
             "tokens listed as promoted gain logit and the suppressed ones lose it.")
MISSING = {
    "explanations": "no explanation: run 2_lora_activation_interp/2.2_run_lora_autointerp.py",
    "random": "no random-direction control: run 2.6 (2_lora_activation_interp/2.6_*)",
    "ablation": "no ablation: run 1_lora_adapter_ablations/1.0_generate_ablation_data.py (family 'adapter')",
    "steering": "not steered: run 4_lora_interventions/4.0_steering.py",
    "attribution": "no attribution: run 4_lora_interventions/4.1_attribution.py",
    "sae": "no SAE features: run 3_lora_sae/3.0_train_sae.py and 3.1_collect_sae_features.py",
    "lens": "no logit lens: the base model's unembedding could not be read",
}
N_LOADINGS = 8
NOT_SAMPLED = "not explained: 2.2 explained {n} features, a sample (--max_features) without this one"


r4 = round_sig


@dataclass
class Artifacts:
    """The inputs of the pages; a None field is a stage that has not run (its sections say so)."""

    topk: TopKResult  # 2.1
    vectors: Vectors  # the adapter's factors
    decode: Callable[[int], str]  # token id -> text
    explanations: dict[str, dict] | None = None  # 2.2 records by feature name
    explainer: str | None = None
    random: dict[str, dict] | None = None  # 2.6 records by feature name (same names as the adapter's)
    random_density: dict[str, float] | None = None  # 2.6 top-k: firing density by feature name
    ablation: dict | None = None  # 1.0 ablation_results.json
    steering: dict | None = None  # 4.0 steering.json
    attribution: dict | None = None  # 4.1 attribution.json
    sae: tuple[TopKResult, dict[str, torch.Tensor]] | None = None  # 3.1 (features, latents)
    sae_explanations: dict[str, dict] | None = None  # 3.3 records by feature name
    lens: Unembedding | None = None
    sources: dict[str, str] = field(default_factory=dict)  # section -> artifact path, shown on every page


def reads(res: TopKResult, f: int, n_examples: int, context: int, used: set[int]) -> dict[str, Any]:
    """Top examples, one example per decile (highest first) and the target tokens of the top examples."""
    t = res.tensors
    top = [res.example("top", f, (r,), context, used) for r in range(min(n_examples, t["top_index_FK"].shape[1]))]
    deciles = []
    if t["decile_index_FDN"].shape[2]:
        for d in reversed(range(t["decile_index_FDN"].shape[1])):
            e = res.example("decile", f, (d, 0), context, used)
            if e is not None:
                deciles.append({"decile": d + 1, **e})
    top = [e for e in top if e is not None]
    return {"top": top, "deciles": deciles, "fires_on": list(dict.fromkeys(e["t"][e["c"]] for e in top))}


def _scores(rec: dict | None, missing: str) -> dict[str, Any]:
    """Explanation and held-out scores of one autointerp record, or why there are none."""
    if rec is None:
        return {"why": missing}
    if rec.get("status") != "ok":
        errors = "; ".join(f"{k}: {v}" for k, v in (rec.get("errors") or {}).items())
        return {"why": "never fires" if rec.get("status") == "skipped" else f"explanation failed: {errors}"}
    out: dict[str, Any] = {"explanation": rec.get("explanation"), "rating": rec.get("class_name"),
                           "category": rec.get("category")}
    for method in ("detection", "fuzzing"):
        res = rec.get(method) or {}
        out[method] = {"v": r4(res.get("balanced_accuracy")), "n": res.get("n"),
                       "why": None if res.get("balanced_accuracy") is not None else
                       res.get("error") or f"not scored ({method})"}
    if rec.get("score") is not None:
        out["score"] = r4(rec["score"])
    return out


def _site_stats(res: TopKResult, s: int) -> dict[str, Any]:
    t = res.tensors
    lo, hi = float(t["min_S"][s]), float(t["max_S"][s])
    bins = t["hist_counts_SB"].shape[1]
    return {"min": r4(lo), "max": r4(hi), "mean": r4(float(t["mean_S"][s])), "std": r4(float(t["std_S"][s])),
            "hist": {"edges": [r4(v) for v in torch.linspace(lo, hi, bins + 1).tolist()],
                     "counts": t["hist_counts_SB"][s].tolist()}}


def _same_space(vectors: Vectors, layer: int, proj: str) -> dict[str, Any]:
    """cos(B of ``proj``, every other vector of the layer of the same dimension), with the chance level."""
    b = vectors[(layer, proj)][1]
    labels, rows = [], []
    for p in PROJECTIONS:
        if (layer, p) not in vectors:
            continue
        for ab, v in zip("AB", vectors[(layer, p)], strict=True):
            if v.shape == b.shape and not (p == proj and ab == "B"):
                labels.append(f"{p.removesuffix('_proj')} {ab}")
                rows.append(v)
    if not rows:
        return {"dim": b.shape[0], "labels": [], "values": [], "chance": r4(random_abs_cos(b.shape[0]))}
    cos = cosine_matrix(torch.stack([b, *rows]))[0, 1:]
    return {"dim": b.shape[0], "labels": labels, "values": [r4(v, 3) for v in cos.tolist()],
            "chance": r4(random_abs_cos(b.shape[0]))}


def ablation_table(report: dict | None) -> dict[tuple[int, str], dict[str, Any]]:
    """(layer, proj) -> {kl, lo, hi, rank, of} from 1.0's 'adapter' family (rank 1 = largest mean KL)."""
    ad = (report or {}).get("adapter")
    if not ad:
        return {}
    cells = {}
    for p, means, los, his in zip(ad["projections"], ad["kl"]["mean"], ad["kl"]["lo"], ad["kl"]["hi"], strict=True):
        for layer, m, lo, hi in zip(ad["layers"], means, los, his, strict=True):
            if m is not None:
                cells[(layer, p)] = {"kl": m, "lo": lo, "hi": hi}
    order = sorted(cells, key=lambda k: -cells[k]["kl"])
    for rank, k in enumerate(order, 1):
        cells[k] = {**{x: r4(v) for x, v in cells[k].items()}, "rank": rank, "of": len(order)}
    return cells


def attribution_table(report: dict | None) -> dict[tuple[int, str], dict[str, Any]]:
    """(layer, proj) -> {share, mean_abs, rank, of}: the adapter's share of the summed mean |attribution|."""
    if not report or not report.get("mean_abs_by_adapter"):
        return {}
    sites = [(s["layer"], s["proj"]) for s in report["sites"]]
    vals = report["mean_abs_by_adapter"]
    total = sum(vals) or 1.0
    order = sorted(range(len(vals)), key=lambda i: -vals[i])
    return {sites[i]: {"share": r4(vals[i] / total), "mean_abs": r4(vals[i]), "rank": rank, "of": len(vals)}
            for rank, i in enumerate(order, 1)}


def steering_table(report: dict | None) -> dict[tuple[int, str], dict[str, Any]]:
    """(layer, proj) -> the 'offset' onset row of 4.0 (natural units: multiples of the scalar's std)."""
    out = {}
    for row in (report or {}).get("onsets", []):
        if row.get("mode") == "offset":
            out[(row["layer"], row["proj"])] = {k: row.get(k) for k in (
                "kl_onset", "kl_onset_ci", "random_kl_onset", "random_kl_onset_ci", "paper_m", "std")} | {
                "has_random": "random_kl_onset" in row}
    return out


def sae_loadings(sae: tuple[TopKResult, dict] | None, n: int = N_LOADINGS) -> dict[int, list[dict]]:
    """site index (of the SAE's sites) -> the alive latents whose unit decoder direction loads on it most."""
    if sae is None:
        return {}
    res, latents = sae
    alive = [(f["latent"], f["name"]) for f in res.features]
    if not alive:
        return {}
    W = latents["W_dec_LS"][torch.tensor([a for a, _ in alive])].float()
    unit = W / W.norm(dim=1, keepdim=True).clamp(min=1e-30)
    out = {}
    for s in range(unit.shape[1]):
        order = unit[:, s].abs().argsort(descending=True)[:n].tolist()
        out[s] = [{"latent": alive[i][0], "name": alive[i][1], "value": r4(float(unit[i, s]), 3)} for i in order]
    return out


def _writes(art: Artifacts, layer: int, proj: str, fires_on: dict[int, list[int]]) -> dict[str, Any]:
    b = art.vectors[(layer, proj)][1]
    a = art.vectors[(layer, proj)][0]
    out: dict[str, Any] = {"space": B_SPACE[proj], "a_norm": r4(float(a.norm())), "b_norm": r4(float(b.norm())),
                           "same_space": _same_space(art.vectors, layer, proj)}
    if proj in RESIDUAL_WRITERS:
        if art.lens is None:
            out["lens"] = {"why": MISSING["lens"]}
        else:
            lens = promoted(art.lens, b, 10, art.decode)
            out["lens"] = {pol: {"promotes": lens["top" if sign > 0 else "bottom"],
                                 "suppresses": lens["bottom" if sign > 0 else "top"],
                                 "note": LENS_NOTE.format(sign=">" if sign > 0 else "<")}
                           for pol, sign in (("positive", 1), ("negative", -1))}
            out["unembed_cos"] = {pol: [[art.decode(i), r4(c, 3)] for i, c in
                                        zip(ids, art.lens.cosines(b, ids), strict=True)]
                                  for pol, ids in fires_on.items()}
    return out


def build_pages(art: Artifacts, n_examples: int = 20, context: int = 16) -> tuple[dict, dict[str, dict]]:
    """(index payload, {data key: page payload}): one data file per adapter (both polarities) and one per
    ``chunk`` SAE latents, an index row per feature."""
    res = art.topk
    sites = res.meta["sites"]
    n_tokens = res.meta.get("n_tokens") or 0
    abl, att, steer = ablation_table(art.ablation), attribution_table(art.attribution), steering_table(art.steering)
    sae_sites = {(s["layer"], s["name"]): i for i, s in enumerate(art.sae[0].meta["sites"])} if art.sae else {}
    loads = sae_loadings(art.sae)
    rows, pages = [], {}
    by_name = {feat["name"]: f for f, feat in enumerate(res.features)}
    for s, site in enumerate(sites):
        layer, proj = site["layer"], site["name"]
        key = f"a_L{layer:03d}_{proj}"
        used: set[int] = set()
        polarities, fires_on = {}, {}
        for pol in ("positive", "negative"):
            name = f"L{layer}_{proj}_{pol}"
            f = by_name[name]
            feat = res.features[f]
            rd = reads(res, f, n_examples, context, used)
            fires_on[pol] = rd.pop("fires_on")[:10]
            expl = _scores(art.explanations.get(name), NOT_SAMPLED.format(n=len(art.explanations))) \
                if art.explanations is not None else {"why": MISSING["explanations"]}
            ctrl = _scores(art.random.get(name), "not in the control's results") if art.random is not None else \
                {"why": MISSING["random"]}
            if art.random_density is not None and name in art.random_density:
                ctrl["density"] = r4(art.random_density[name])
            density = feat["n_active"] / n_tokens if n_tokens else None
            polarities[pol] = {"name": name, "density": r4(density), "n_active": feat["n_active"],
                               "threshold": r4(feat.get("threshold")), **rd, "explained": expl, "control": ctrl}
            rows.append(_row(name, layer, proj, pol, density, polarities[pol], abl.get((layer, proj)),
                             steer.get((layer, proj)), att.get((layer, proj)), key))
        s_sae = sae_sites.get((layer, proj))
        does = {"ablation": abl.get((layer, proj)) or {"why": MISSING["ablation"] if not abl else
                                                       "not in 1.0's adapter family (another run or layer range)"},
                "steering": steer.get((layer, proj)) or {"why": MISSING["steering"] if art.steering is None else
                                                         _not_steered(art.steering)},
                "attribution": att.get((layer, proj)) or {"why": MISSING["attribution"]},
                "sae_latents": loads.get(s_sae) if s_sae is not None else {"why": MISSING["sae"]}}
        pages[key] = {"kind": "adapter", "layer": layer, "proj": proj, "stats": _site_stats(res, s),
                      "polarities": polarities, "writes": _writes(art, layer, proj, fires_on), "does": does,
                      "vocab": {str(i): art.decode(i) for i in sorted(used)}}
    latents = _latent_pages(art, n_examples, context, pages)
    index = {"n_adapters": len(sites), "n_latents": len(latents), "n_tokens": n_tokens,
             "run": res.meta.get("identity", {}).get("run", ""), "explainer": art.explainer,
             "sources": art.sources, "rows": rows + latents}
    return index, pages


def _not_steered(report: dict) -> str:
    cfg = report.get("config") or {}
    return (f"not in 4.0's sweep (it steered layers {cfg.get('layers') or 'chosen by --n_layers'} and projections "
            f"{cfg.get('scalar_projections')})")


def _row(name, layer, proj, pol, density, page, abl, steer, att, key) -> dict[str, Any]:
    e, c = page["explained"], page["control"]
    return {"name": name, "kind": "adapter", "layer": layer, "proj": proj, "polarity": pol, "key": key,
            "density": r4(density), "max": page["top"][0]["v"] if page["top"] else None,
            "explanation": e.get("explanation") or "", "detection": (e.get("detection") or {}).get("v"),
            "fuzzing": (e.get("fuzzing") or {}).get("v"), "random_detection": (c.get("detection") or {}).get("v"),
            "kl": (abl or {}).get("kl"), "kl_rank": (abl or {}).get("rank"),
            "onset": (steer or {}).get("kl_onset"), "attr_share": (att or {}).get("share")}


LATENT_CHUNK = 64


def _latent_pages(art: Artifacts, n_examples: int, context: int, pages: dict[str, dict]) -> list[dict]:
    if art.sae is None:
        return []
    res, latents = art.sae
    sites = res.meta["sites"]
    rows = []
    for f, feat in enumerate(res.features):
        key = f"s_{f // LATENT_CHUNK:04d}"
        chunk = pages.setdefault(key, {"kind": "latents", "latents": {}, "vocab": set()})
        rd = reads(res, f, n_examples, context, chunk["vocab"])
        rd.pop("fires_on")
        expl = _scores((art.sae_explanations or {}).get(feat["name"]),
                       "not explained: 3.3.0 explained a sample, or has not run") \
            if art.sae_explanations is not None else {"why": "no explanations: run 3_lora_sae/3.3_autointerp/3.3.0"}
        w = latents["W_dec_LS"][feat["latent"]].float()
        loadings = [{**x, "key": f"a_L{x['layer']:03d}_{x['proj']}"} for x in top_loadings(w, sites, N_LOADINGS)]
        chunk["latents"][feat["name"]] = {
            "name": feat["name"], "latent": feat["latent"], "density": r4(feat.get("density")),
            "max": r4(feat.get("max")), "mass": r4(feat.get("activation_mass")), **rd, "explained": expl,
            "loadings": loadings}
        top = loadings[0] if loadings else None
        rows.append({"name": feat["name"], "kind": "latent", "layer": None, "proj": None, "polarity": None,
                     "key": key, "density": r4(feat.get("density")), "max": r4(feat.get("max")),
                     "explanation": expl.get("explanation") or "", "detection": expl.get("score"),
                     "fuzzing": None, "random_detection": None, "kl": None, "kl_rank": None, "onset": None,
                     "attr_share": None, "loads_on": f"L{top['layer']} {top['proj']}" if top else None})
    for page in pages.values():
        if page.get("kind") == "latents" and isinstance(page["vocab"], set):
            page["vocab"] = {str(i): art.decode(i) for i in sorted(page["vocab"])}
    return rows
