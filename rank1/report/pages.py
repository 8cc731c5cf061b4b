"""Stage 6.0: the feature pages of a run, its Neuronpedia export and its model cards, from saved artifacts only.

Reads (each optional except the top-k examples; a missing one leaves its sections saying which script makes it):
``lora_topk/<run>`` (2.1), ``lora_autointerp/<run>`` (2.2), ``random_topk`` and ``random_autointerp/<run>``
(2.6), ``ablations/<run>/ablation_results.json`` (1.0), ``steering/<run>/steering.json`` (4.0),
``attribution/<run>/attribution.json`` (4.1), ``sae_features/<run>`` (3.1), ``sae_autointerp/<run>`` (3.3),
the adapter's weights and the base model's unembedding. Every artifact that records the weights it was made
from is checked against the run (an artifact of other weights is an error, not a silently mixed page).

Writes ``results/<profile>/feature_pages/<run>/``: ``index.html`` (+ ``features.js``, ``data/*.js``; opens from
disk), ``neuronpedia/`` (the export, :mod:`rank1.report.neuronpedia`), ``model_card_adapter.md`` and
``model_card_sae.md`` (copies of the cards written as ``README.md`` beside the adapter and the SAE).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.artifacts import read_json, write_run_metadata, write_text
from rank1.config import results_dir
from rank1.dashboard import token_bytes, write_dashboard
from rank1.data import read_jsonl
from rank1.lora import adapter_vectors
from rank1.models import load_tokenizer
from rank1.report.card import adapter_card, hub_id, sae_card
from rank1.report.config import FeaturePagesConfig
from rank1.report.features import Artifacts, build_pages
from rank1.report.lens import load_unembedding
from rank1.report.neuronpedia import write_export
from rank1.runs import Run, check_same_identity
from rank1.sae import load_features
from rank1.store import check_writable
from rank1.topk import TopKResult

log = logging.getLogger(__name__)

PAGES_STAGE = "feature_pages"
NEURONPEDIA_DIR = "neuronpedia"
CARD = "README.md"


def _json(profile: str, stage: str, run: Run, name: str, sources: dict[str, str], section: str) -> dict | None:
    path = results_dir(profile, stage, run.name) / name
    if not path.is_file():
        return None
    report = read_json(path)
    if report.get("identity"):
        check_same_identity(run.identity(), report["identity"], str(path))
    sources[section] = str(path)
    return report


def _explanations(profile: str, stage: str, run: Run, sources: dict[str, str], section: str
                  ) -> tuple[dict[str, dict] | None, dict[str, Any]]:
    folder = results_dir(profile, stage, run.name)
    if not (folder / K.AUTOINTERP_RESULTS).is_file() or not (folder / K.CONFIG_JSON).is_file():
        return None, {}
    config = read_json(folder / K.CONFIG_JSON)
    if config.get("identity"):
        check_same_identity(run.identity(), config["identity"], str(folder))
    sources[section] = str(folder / K.AUTOINTERP_RESULTS)
    return {r["name"]: r for r in read_jsonl(folder / K.AUTOINTERP_RESULTS)}, config


def _random_density(profile: str, run: Run) -> dict[str, float] | None:
    folder = results_dir(profile, "random_topk", run.name)
    if not (folder / K.TOPK_FEATURES).is_file() or not (folder / K.CONFIG_JSON).is_file():
        return None
    n = read_json(folder / K.CONFIG_JSON).get("n_tokens") or 0
    return {f["name"]: f["n_active"] / n for f in read_json(folder / K.TOPK_FEATURES)} if n else None


def gather(cfg: FeaturePagesConfig, run: Run) -> tuple[Artifacts, Any]:
    """Every artifact the pages read, checked against ``run``, and the run's tokenizer."""
    profile = cfg.profile
    sources: dict[str, str] = {}
    src = results_dir(profile, "lora_topk", run.name)
    topk = TopKResult.load(src)
    check_same_identity(run.identity(), topk.meta["identity"], f"top-k examples {src}")
    sources["examples"] = str(src)
    tok = load_tokenizer(run.model_id)
    explanations, expl_cfg = _explanations(profile, K.AUTOINTERP_STAGE.format(kind="lora"), run, sources,
                                           "explanations")
    random, _ = _explanations(profile, K.AUTOINTERP_STAGE.format(kind="random"), run, sources, "random control")
    sae = None
    sae_dir = results_dir(profile, K.SAE_FEATURES_STAGE, run.name)
    if (sae_dir / K.SAE_LATENTS).is_file():
        sae = load_features(sae_dir)
        check_same_identity(run.identity(), sae[0].meta.get("identity") or {}, f"SAE features {sae_dir}")
        sources["SAE latents"] = str(sae_dir)
    sae_expl, _ = _explanations(profile, K.SAE_AUTOINTERP_STAGE, run, sources, "SAE explanations")
    try:
        lens = load_unembedding(run.model_id)
    except (OSError, ValueError) as e:  # the pages still build; the write side says why there is no lens
        log.warning("no logit lens: %s", e)
        lens = None
    return Artifacts(
        topk=topk, vectors=adapter_vectors(run.weights_dir), decode=lambda i: tok.decode([int(i)]),
        explanations=explanations, explainer=expl_cfg.get("explainer"), random=random,
        random_density=_random_density(profile, run),
        ablation=_json(profile, K.ABLATION_STAGE, run, K.ABLATION_JSON, sources, "ablation"),
        steering=_json(profile, K.STEERING_STAGE, run, K.STEERING_JSON, sources, "steering"),
        attribution=_json(profile, K.ATTRIBUTION_STAGE, run, K.ATTRIBUTION_JSON, sources, "attribution"),
        sae=sae, sae_explanations=sae_expl, lens=lens, sources=sources), tok


def neuronpedia_features(index: dict, pages: dict[str, dict]) -> list[dict[str, Any]]:
    """The pages' features in the export's input form (:func:`rank1.report.neuronpedia.write_export`), each with
    ``set``: adapter features by layer (index 2 x projection slot + polarity: 0 q+, 1 q-, ..., 13 down-), SAE
    latents as one source (layer 0, index the latent), exported as two source sets."""
    out = []
    for row in index["rows"]:
        page = pages[row["key"]]
        if row["kind"] == "adapter":
            side = page["polarities"][row["polarity"]]
            slot = K.PROJECTIONS.index(row["proj"])
            feat_index = 2 * slot + (row["polarity"] == "negative")
            lens = (page["writes"].get("lens") or {}).get(row["polarity"])
            logits = {"pos": lens["promotes"], "neg": lens["suppresses"]} if lens else None
            hist = page["stats"]["hist"]
        else:
            side = page["latents"][row["name"]]
            feat_index, logits, hist = side["latent"], None, None
        vocab = page["vocab"]
        expl = side["explained"]
        out.append({"layer": row["layer"] if row["kind"] == "adapter" else 0, "index": feat_index,
                    "set": row["kind"], "density": row["density"] or 0.0,
                    "max_act": row["max"] if row["max"] is not None else 0.0, "hist": hist, "logits": logits,
                    "examples": [{"tokens": [vocab[str(t)] for t in e["t"]], "values": [v or 0.0 for v in e["a"]]}
                                 for e in side["top"]],
                    "explanation": expl.get("explanation"), "explainer": index.get("explainer"), "label": row["name"]})
    return out


def run_feature_pages(cfg: FeaturePagesConfig) -> Path:
    """Write the pages, the export and the cards; returns the pages folder."""
    run = cfg.resolve_run()
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, PAGES_STAGE, run.name)
    check_writable(out.parent)
    art, tok = gather(cfg, run)
    index, pages = build_pages(art, cfg.n_examples, cfg.context)
    used = {int(i) for p in pages.values() for i in p["vocab"]}
    partial = token_bytes(tok, used)
    for p in pages.values():
        p["bytes"] = {k: v for k, v in partial.items() if k in p["vocab"]}
    index["title"] = f"Feature pages: {run.name}"
    write_dashboard(out, index["title"], "features.js", index, pages)
    feats = neuronpedia_features(index, pages)
    # every record's createdAt: when the adapter was written (the same inputs give the same bytes)
    created = datetime.fromtimestamp((run.weights_dir / "adapter_model.safetensors").stat().st_mtime,
                                     tz=UTC).isoformat(timespec="seconds")
    model_id = cfg.neuronpedia_model or _np_id(Path((hub_id(run.model_id) or run.model_id).split(":")[-1]).name)
    for kind in ("adapter", "latent"):
        chosen = [{k: v for k, v in f.items() if k != "set"} for f in feats if f["set"] == kind]
        if chosen:
            write_export(out / NEURONPEDIA_DIR / kind, model_id=model_id, created_at=created,
                         source_set=f"rank1-{kind}", features=chosen, batch_size=cfg.neuronpedia_batch,
                         release={"id": f"rank1-{_np_id(run.name)}", "title": f"Rank-1 LoRA features of {run.name}",
                                  "description": "Rank-1 LoRA adapter directions (adapter x polarity) and SAE latents "
                                                 "on the adapter state", "creator": "rank1", "url": ""})
    _cards(cfg, run, out)
    write_run_metadata(out, cfg, {"identity": run.identity(), "sources": art.sources})
    return out


def _np_id(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text.lower())


def _cards(cfg: FeaturePagesConfig, run: Run, out: Path) -> None:
    recovery = results_dir(cfg.profile, "eval", run.name) / K.RECOVERY_MD
    text = adapter_card(run, cfg.profile, recovery.read_text(encoding="utf-8") if recovery.is_file() else None)
    write_text(out / "model_card_adapter.md", text)
    _beside(run.weights_dir / CARD, text)
    sae_dir = results_dir(cfg.profile, K.SAE_STAGE, run.name)
    if (sae_dir / K.SAE_METRICS_JSON).is_file():
        card = sae_card(run, cfg.profile, read_json(sae_dir / K.SAE_METRICS_JSON))
        write_text(out / "model_card_sae.md", card)
        _beside(sae_dir / CARD, card)


def _beside(path: Path, text: str) -> None:
    """A card as README.md beside the weights; a folder we may not write to (an adapter made elsewhere) keeps
    its own, said in the log (the copy in the pages folder is there either way)."""
    try:
        write_text(path, text)
    except OSError as e:
        log.warning("model card not written beside the weights (%s); it is in the pages folder", e)
