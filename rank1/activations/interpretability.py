"""Numbers from finished autointerp folders: class shares (2.3) and LoRA features vs. MLP neurons (2.8).

Every share carries a 95% percentile bootstrap CI over features (10,000 resamples by default); features
that were skipped (no activating example) or whose explanation failed are counted, not rated.

- :func:`analyze`: shares of the three classes overall, by layer bin (``layer_bin`` layers per bin, e.g. the
  authors' 8; 0: thirds of the network), by projection (when the features are adapters), by polarity;
  the held-out scores (detection, fuzzing: mean with CI, quartiles, histogram, mean per class); category
  shares.
- :func:`compare`: the same shares side by side for LoRA features, MLP neurons and the random-direction control
  (``rank1.activations.control``: untrained directions at the adapter's sites, on the base model); the
  chi-square test of the 2 x 3 table (LoRA / MLP x class; it counts the two polarities of a site as two
  units, so it is kept as the paper's test only); the site-level comparison, where a site (both polarities)
  is one unit, monosemantic when either polarity is, LoRA minus each other side with a CI (paired by site
  against the control, which has the same sites; two-sample against MLP neurons); the density-matched
  comparison (the lexicon explainer rates a sparse feature monosemantic more easily than a dense one, so
  shares are also given per firing-density bin and standardised to LoRA's densities); a Mann-Whitney test of
  each held-out score; and category enrichment (share among LoRA features over share among MLP features,
  two-sample bootstrap CI, Fisher exact p with Benjamini-Hochberg q across all categories) beside the paper's
  numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import fisher_exact

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.autointerp.categories import SCHEMES
from rank1.autointerp.prompts import CLASSES
from rank1.autointerp.run import AutointerpError
from rank1.constants import PROJECTIONS
from rank1.paper import PAPER_INTERP as PAPER
from rank1.runs import check_same_identity
from rank1.stats import (
    DEFAULT_RESAMPLES,
    bootstrap_mean,
    chi_square,
    class_shares,
    enrichment,
    fdr_bh,
    paired_difference,
    rank_test,
)

SCORES = ("detection", "fuzzing")
HIST_BINS = 10

def load_autointerp(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records, config) of a finished autointerp folder."""
    folder = Path(folder)
    if not (folder / K.CONFIG_JSON).is_file() or not (folder / K.AUTOINTERP_RESULTS).is_file():
        hint = " (unfinished: rerun the same command to continue)" if (folder / K.AUTOINTERP_JOURNAL).is_file() else ""
        raise AutointerpError(f"{folder} holds no finished autointerp results{hint}; run "
                              f"2_lora_activation_interp/2.2_run_lora_autointerp.py (or 2.7 for MLP neurons) first")
    text = (folder / K.AUTOINTERP_RESULTS).read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines: U+2028 in a record
    return records, read_json(folder / K.CONFIG_JSON)


def rated(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok" and r.get("classification") in CLASSES]


def layer_bins(n_layers: int, layer_bin: int) -> list[tuple[int, int]]:
    """[lo, hi) bins: ``layer_bin`` layers each (the last one shorter), or thirds when ``layer_bin`` is 0."""
    if layer_bin > 0:
        return [(lo, min(lo + layer_bin, n_layers)) for lo in range(0, n_layers, layer_bin)]
    edges = [round(i * n_layers / 3) for i in range(4)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def shares(records: list[dict], n_resamples: int, seed: int) -> dict[str, Any]:
    labels = [r["classification"] for r in records]
    est = class_shares(labels, list(CLASSES), n_resamples, seed=seed)
    return {"n": len(records), "counts": {CLASSES[c]: labels.count(c) for c in CLASSES},
            "shares": {CLASSES[c]: e.to_dict() for c, e in est.items()}}


def score_summary(records: list[dict], method: str, n_resamples: int, seed: int) -> dict[str, Any]:
    vals = [r[method]["balanced_accuracy"] for r in records
            if r.get(method) and r[method].get("balanced_accuracy") is not None]
    out: dict[str, Any] = {"n": len(vals), "n_undefined": len(records) - len(vals)}
    if not vals:
        return out
    x = np.asarray(vals)
    out.update(mean=bootstrap_mean(x, n_resamples, seed=seed).to_dict(),
               quartiles=np.quantile(x, [0.25, 0.5, 0.75]).tolist(),
               histogram={"edges": np.linspace(0, 1, HIST_BINS + 1).tolist(),
                          "counts": np.histogram(x, bins=HIST_BINS, range=(0, 1))[0].tolist()},
               mean_by_class={CLASSES[c]: (float(np.mean(v)) if (v := [
                   r[method]["balanced_accuracy"] for r in records if r["classification"] == c
                   and r.get(method) and r[method].get("balanced_accuracy") is not None]) else None) for c in CLASSES})
    return out


def scheme_of(config: dict) -> str:
    cat = (config.get("settings") or {}).get("categoriser") or {}
    return cat.get("scheme", "lexicon")


def analyze(records: list[dict], n_layers: int | None, layer_bin: int = 0, n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0, scheme: str = "lexicon") -> dict[str, Any]:
    ok = rated(records)
    status = {s: sum(r.get("status") == s for r in records) for s in ("ok", "error", "skipped")}
    if not ok:
        raise AutointerpError(f"no feature was rated (status counts {status}); look at the errors in "
                              f"{K.AUTOINTERP_RESULTS}")
    out: dict[str, Any] = {"n_features": len(records), "status": status, "classes": shares(ok, n_resamples, seed)}
    if n_layers and all("layer" in r for r in ok):
        out["layer_bin"] = layer_bin or "thirds"
        out["by_layer_bin"] = [{"layers": [lo, hi - 1], **shares([r for r in ok if lo <= r["layer"] < hi],
                                                                  n_resamples, seed)}
                               for lo, hi in layer_bins(n_layers, layer_bin)]
    if ok and all(r.get("site_name") in PROJECTIONS for r in ok):
        out["by_projection"] = {p: shares([r for r in ok if r["site_name"] == p], n_resamples, seed)
                                for p in PROJECTIONS if any(r["site_name"] == p for r in ok)}
    if len({r.get("polarity") for r in ok}) > 1:
        out["by_polarity"] = {name: shares([r for r in ok if r.get("polarity") == pol], n_resamples, seed)
                              for pol, name in ((1, "positive"), (-1, "negative"))}
    out["scores"] = {m: score_summary(ok, m, n_resamples, seed) for m in SCORES}
    keys = SCHEMES[scheme].keys
    cats = [r["category"] for r in ok if r.get("category")]
    if cats:
        est = class_shares(cats, keys, n_resamples, seed=seed)
        out["categories"] = {k: {"name": SCHEMES[scheme].names[k], "count": cats.count(k), "share": e.to_dict()}
                             for k, e in est.items()}
    return out


def check_comparable(lora_cfg: dict, mlp_cfg: dict, lora_dir: Path, mlp_dir: Path, other: str = "mlp") -> None:
    """Both sides from the same run and corpus, explained and scored the same way; raises otherwise. The
    random-direction control (``other='random'``) may read a prefix of the LoRA side's corpus (the profile's
    ``random_max_tokens``): the same source, at most as many tokens."""
    for cfg, folder, kind in ((lora_cfg, lora_dir, "lora"), (mlp_cfg, mlp_dir, other)):
        if cfg.get("kind", kind) != kind:
            raise AutointerpError(f"{folder} holds autointerp results of {cfg.get('kind')!r} features, not {kind!r}")
    check_same_identity(lora_cfg.get("identity") or {}, mlp_cfg.get("identity") or {},
                        f"the {'MLP' if other == 'mlp' else 'random-direction control'} side {mlp_dir} (its top-k "
                        f"examples)")
    corpus = [(c.get("corpus") or {}).get("sha256") for c in (lora_cfg, mlp_cfg)]
    if other == "random":
        corpus = [(c.get("corpus") or {}).get("source") for c in (lora_cfg, mlp_cfg)]
    mismatch = (lora_cfg.get("n_tokens") or 0) < (mlp_cfg.get("n_tokens") or 0) if other == "random" else \
        lora_cfg.get("n_tokens") != mlp_cfg.get("n_tokens")
    if corpus[0] != corpus[1] or mismatch:
        raise AutointerpError(f"{lora_dir} and {mlp_dir} come from different corpora ({lora_cfg.get('n_tokens')} vs. "
                              f"{mlp_cfg.get('n_tokens')} tokens); extract both stores with the same --corpus and "
                              f"--max_tokens")
    ls, ms = lora_cfg.get("settings") or {}, mlp_cfg.get("settings") or {}
    for part in ("explainer", "scorer", "categoriser", "options"):
        if ls.get(part) != ms.get(part):
            raise AutointerpError(f"the two sides were made with different {part} settings ({ls.get(part)} vs. "
                                  f"{ms.get(part)}); rerun one of them with the other's settings (--overwrite)")


def two_sample_difference(a_N, b_M, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          level: float = 0.95) -> dict[str, Any]:
    """mean(a) - mean(b) of two independent samples with a percentile bootstrap CI (each resampled on its own)."""
    a_N, b_M = np.asarray(a_N, dtype=np.float64), np.asarray(b_M, dtype=np.float64)
    if not len(a_N) or not len(b_M):
        return {"value": None, "lo": None, "hi": None, "n": [len(a_N), len(b_M)]}
    rng = np.random.default_rng(seed)
    reps = (a_N[rng.integers(0, len(a_N), (n_resamples, len(a_N)))].mean(1)
            - b_M[rng.integers(0, len(b_M), (n_resamples, len(b_M)))].mean(1))
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(a_N.mean() - b_M.mean()), "lo": float(lo), "hi": float(hi), "level": level,
            "n": [len(a_N), len(b_M)], "test": "two-sample bootstrap"}


def site_monosemantic(records: list[dict]) -> dict[tuple, bool]:
    """{(layer, site): monosemantic} over the rated features: a site (one adapter, neuron or control direction,
    both polarities) is one unit, monosemantic when either of its polarities is rated so."""
    out: dict[tuple, bool] = {}
    for r in rated(records):
        key = (r.get("layer"), r.get("site_name", r.get("site")))
        out[key] = out.get(key, False) or r["classification"] == 0
    return out


def site_comparison(sides: dict[str, list[dict]], n_resamples: int, seed: int) -> dict[str, Any]:
    """Monosemantic share of sites per side, and LoRA minus each other side: against the random control paired
    by site (the same layers and projections, every site rated on both sides) with a sign-flip test; against
    MLP neurons (other sites) as two independent samples."""
    mono = {k: site_monosemantic(v) for k, v in sides.items()}
    out: dict[str, Any] = {"unit": "site (both polarities; monosemantic if either polarity is)",
                           "shares": {k: {"n": len(m), "monosemantic": bootstrap_mean(
                               np.array(list(m.values()), dtype=float), n_resamples, seed=seed).to_dict()}
                               for k, m in mono.items() if m}, "lora_minus": {}}
    for other in (k for k in mono if k != "lora"):
        shared = sorted(set(mono["lora"]) & set(mono[other]), key=str)
        if other == "random" and len(shared) >= 2 and len(shared) == len(mono["lora"]) == len(mono[other]):
            d = paired_difference(np.array([mono["lora"][s] for s in shared], dtype=float),
                                  np.array([mono[other][s] for s in shared], dtype=float), n_resamples, seed=seed)
            out["lora_minus"][other] = {"value": d["mean_diff"], "lo": d["lo"], "hi": d["hi"], "level": d["level"],
                                        "n": [len(shared)] * 2, "test": "paired by site", "p_value": d["p_sign_flip"]}
        else:
            out["lora_minus"][other] = two_sample_difference(list(mono["lora"].values()), list(mono[other].values()),
                                                             n_resamples, seed)
    return out


def density_comparison(sides: dict[str, list[dict]], n_tokens: dict[str, int | None], n_bins: int,
                       n_resamples: int, seed: int) -> dict[str, Any] | None:
    """Monosemantic share per firing-density bin per side (density: the share of the side's tokens where the
    feature is active, ``n_active / n_tokens``; bins: quantiles of all sides' densities pooled), and each side's
    share standardised to the LoRA features' density distribution (the per-bin shares weighted by LoRA's bin
    counts), so sides are compared at matched density. None when a side lacks densities."""
    dens = {}
    for k, recs in sides.items():
        ok = rated(recs)
        if not n_tokens.get(k) or not ok or any(r.get("n_active") is None for r in ok):
            return None
        dens[k] = (np.array([r["n_active"] / n_tokens[k] for r in ok]), np.array([r["classification"] == 0
                                                                                  for r in ok], dtype=float))
    pooled = np.concatenate([d for d, _ in dens.values()])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1)))
    edges[0], edges[-1] = 0.0, 1.0
    which = {k: np.clip(np.searchsorted(edges, d, side="right") - 1, 0, len(edges) - 2) for k, (d, _) in dens.items()}
    bins = []
    for b in range(len(edges) - 1):
        row: dict[str, Any] = {"density": [float(edges[b]), float(edges[b + 1])]}
        for k, (_, mono) in dens.items():
            sel = mono[which[k] == b]
            row[k] = {"n": len(sel), "monosemantic": bootstrap_mean(sel, n_resamples, seed=seed).to_dict()
                      if len(sel) else None}
        bins.append(row)
    weights = np.array([r["lora"]["n"] for r in bins], dtype=float) / len(dens["lora"][0])
    standardised = {}
    for k, (_, mono) in dens.items():
        per_bin = [float(mono[which[k] == b].mean()) if (which[k] == b).any() else None for b in range(len(bins))]
        missing = [i for i, v in enumerate(per_bin) if v is None and weights[i] > 0]
        standardised[k] = None if missing else float(sum(w * (v or 0.0) for w, v in zip(weights, per_bin,
                                                                                         strict=True)))
    return {"unit": "feature", "density": "n_active / n_tokens of the side's store", "bins": bins,
            "standardised_to_lora": standardised,
            "median_density": {k: float(np.median(d)) for k, (d, _) in dens.items()}}


def enrichment_tests(a: list[dict], b: list[dict], scheme: str, n_resamples: int, seed: int) -> dict[str, Any]:
    """Category enrichment of ``a`` over ``b`` with a Fisher exact p per category and Benjamini-Hochberg q
    across all the scheme's categories (they are tested together)."""
    sch = SCHEMES[scheme]
    ca, cb = [r.get("category") for r in a], [r.get("category") for r in b]
    est = enrichment(ca, cb, sch.keys, n_resamples, seed=seed)
    p = [float(fisher_exact([[ca.count(k), len(ca) - ca.count(k)], [cb.count(k), len(cb) - cb.count(k)]])[1])
         for k in sch.keys]
    q = fdr_bh(np.array(p)).tolist()
    return {k: {"name": sch.names[k], "lora_count": ca.count(k), "mlp_count": cb.count(k),
                "lora_share": ca.count(k) / len(ca), "mlp_share": cb.count(k) / len(cb), "enrichment": e.to_dict(),
                "p_fisher": p[i], "q_bh": q[i], "paper": PAPER["enrichment"].get(k) if scheme == "lexicon" else None}
            for i, (k, e) in enumerate(est.items())}


def compare(lora: list[dict], mlp: list[dict], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
            scheme: str = "lexicon", random: list[dict] | None = None, n_tokens: dict[str, int | None] | None = None,
            density_bins: int = 5) -> dict[str, Any]:
    """LoRA features vs. MLP neurons (and the random-direction control when given): see the module docstring."""
    sides = {"lora": lora, "mlp": mlp, **({"random": random} if random is not None else {})}
    ok = {k: rated(v) for k, v in sides.items()}
    if not all(ok.values()):
        raise AutointerpError("need rated features on every side, got " +
                              ", ".join(f"{len(v)} {k}" for k, v in ok.items()))
    a, b = ok["lora"], ok["mlp"]
    table = [[sum(r["classification"] == c for r in side) for c in CLASSES] for side in (a, b)]
    out: dict[str, Any] = {"sides": list(sides), "classes": {k: shares(v, n_resamples, seed) for k, v in ok.items()},
                           "table": {"rows": ["lora", "mlp"], "columns": list(CLASSES.values()), "counts": table,
                                     "unit": "feature (the two polarities of a site counted as two units)"},
                           "chi_square": chi_square(table), "sites": site_comparison(sides, n_resamples, seed)}
    out["density"] = density_comparison(sides, n_tokens or {}, density_bins, n_resamples, seed)
    out["scores"] = {}
    for m in SCORES:
        vals = {k: [r[m]["balanced_accuracy"] for r in v if r.get(m) and r[m].get("balanced_accuracy") is not None]
                for k, v in ok.items()}
        out["scores"][m] = {**{k: {**score_summary(v, m, n_resamples, seed), "values": vals[k]} for k, v in ok.items()},
                            "mann_whitney": rank_test(vals["lora"], vals["mlp"])}
        if "random" in ok:
            out["scores"][m]["mann_whitney_random"] = rank_test(vals["lora"], vals["random"])
    if any(r.get("category") for r in a) and any(r.get("category") for r in b):
        out["enrichment"] = enrichment_tests(a, b, scheme, n_resamples, seed)
        out["enrichment_correction"] = "Benjamini-Hochberg across the categories (q_bh), Fisher exact p per category"
    out["paper"] = PAPER
    return out
