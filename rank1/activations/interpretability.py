"""Numbers from finished autointerp folders: class shares (2.3) and LoRA features vs. MLP neurons (2.8).

Every share carries a 95% percentile bootstrap CI over features (10,000 resamples by default); features
that were skipped (no activating example) or whose explanation failed are counted, not rated.

- :func:`analyze`: shares of the three classes overall, by layer bin (``layer_bin`` layers per bin, e.g. the
  authors' 8; 0: thirds of the network), by projection (when the features are adapters), by polarity;
  the held-out scores (detection, fuzzing: mean with CI, quartiles, histogram, mean per class); category
  shares.
- :func:`compare`: the same shares side by side, the chi-square test of the 2 x 3 table (LoRA / MLP x
  class), a Mann-Whitney test of each held-out score, and category enrichment (share among LoRA features
  over share among MLP features, two-sample bootstrap CI) for every category, beside the paper's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.autointerp.categories import SCHEMES
from rank1.autointerp.prompts import CLASSES
from rank1.autointerp.run import AutointerpError
from rank1.constants import PROJECTIONS
from rank1.paper import PAPER_INTERP as PAPER
from rank1.runs import check_same_identity
from rank1.stats import DEFAULT_RESAMPLES, bootstrap_mean, chi_square, class_shares, enrichment, rank_test

SCORES = ("detection", "fuzzing")
HIST_BINS = 10

def load_autointerp(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records, config) of a finished autointerp folder."""
    folder = Path(folder)
    if not (folder / K.CONFIG_JSON).is_file() or not (folder / K.AUTOINTERP_RESULTS).is_file():
        hint = " (unfinished: rerun the same command to continue)" if (folder / K.AUTOINTERP_JOURNAL).is_file() else ""
        raise AutointerpError(f"{folder} holds no finished autointerp results{hint}; run "
                              f"2_lora_activation_interp/2.2_run_lora_autointerp.py (or 2.7 for MLP neurons) first")
    records = [json.loads(line) for line in (folder / K.AUTOINTERP_RESULTS).read_text().splitlines() if line]
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


def check_comparable(lora_cfg: dict, mlp_cfg: dict, lora_dir: Path, mlp_dir: Path) -> None:
    """Both sides from the same run and corpus, explained and scored the same way; raises otherwise."""
    for cfg, folder, kind in ((lora_cfg, lora_dir, "lora"), (mlp_cfg, mlp_dir, "mlp")):
        if cfg.get("kind", kind) != kind:
            raise AutointerpError(f"{folder} holds autointerp results of {cfg.get('kind')!r} features, not {kind!r}")
    check_same_identity(lora_cfg.get("identity") or {}, mlp_cfg.get("identity") or {},
                        f"the MLP side {mlp_dir} (its top-k examples)")
    corpus = [(c.get("corpus") or {}).get("sha256") for c in (lora_cfg, mlp_cfg)]
    if corpus[0] != corpus[1] or lora_cfg.get("n_tokens") != mlp_cfg.get("n_tokens"):
        raise AutointerpError(f"{lora_dir} and {mlp_dir} come from different corpora ({lora_cfg.get('n_tokens')} vs. "
                              f"{mlp_cfg.get('n_tokens')} tokens); extract both stores with the same --corpus and "
                              f"--max_tokens")
    ls, ms = lora_cfg.get("settings") or {}, mlp_cfg.get("settings") or {}
    for part in ("explainer", "scorer", "categoriser", "options"):
        if ls.get(part) != ms.get(part):
            raise AutointerpError(f"the two sides were made with different {part} settings ({ls.get(part)} vs. "
                                  f"{ms.get(part)}); rerun one of them with the other's settings (--overwrite)")


def compare(lora: list[dict], mlp: list[dict], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
            scheme: str = "lexicon") -> dict[str, Any]:
    a, b = rated(lora), rated(mlp)
    if not a or not b:
        raise AutointerpError(f"need rated features on both sides, got {len(a)} LoRA and {len(b)} MLP")
    table = [[sum(r["classification"] == c for r in side) for c in CLASSES] for side in (a, b)]
    out: dict[str, Any] = {"classes": {"lora": shares(a, n_resamples, seed), "mlp": shares(b, n_resamples, seed)},
                           "table": {"rows": ["lora", "mlp"], "columns": list(CLASSES.values()), "counts": table},
                           "chi_square": chi_square(table)}
    out["scores"] = {}
    for m in SCORES:
        va = [r[m]["balanced_accuracy"] for r in a if r.get(m) and r[m].get("balanced_accuracy") is not None]
        vb = [r[m]["balanced_accuracy"] for r in b if r.get(m) and r[m].get("balanced_accuracy") is not None]
        out["scores"][m] = {"lora": {**score_summary(a, m, n_resamples, seed), "values": va},
                            "mlp": {**score_summary(b, m, n_resamples, seed), "values": vb},
                            "mann_whitney": rank_test(va, vb)}
    sch = SCHEMES[scheme]
    ca, cb = [r.get("category") for r in a], [r.get("category") for r in b]
    if any(ca) and any(cb):
        est = enrichment(ca, cb, sch.keys, n_resamples, seed=seed)
        out["enrichment"] = {k: {"name": sch.names[k], "lora_count": ca.count(k), "mlp_count": cb.count(k),
                                 "lora_share": ca.count(k) / len(ca), "mlp_share": cb.count(k) / len(cb),
                                 "enrichment": e.to_dict(), "paper": PAPER["enrichment"].get(k) if scheme == "lexicon"
                                 else None} for k, e in est.items()}
    out["paper"] = PAPER
    return out
