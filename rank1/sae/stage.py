"""Stage 3 (``3_lora_sae/``), one ``run_<script>(cfg) -> Path`` per numbered script.

Each resolves the run and its input and output folders, skips work that is finished with the same inputs,
refuses inputs made from another run or with other settings, calls the numerics (:mod:`rank1.sae.train`,
:mod:`rank1.sae.splice`, :mod:`rank1.sae.features`, :mod:`rank1.sae.categories`), writes the artifacts with the
config and command line they were made from and returns the output folder. What the script shows when it is
done goes to ``report`` (the scripts pass ``print``; by default it is logged).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rank1 import constants as K
from rank1.artifacts import (
    file_sha256,
    public_argv,
    public_config,
    read_json,
    reuse_finished,
    settings_digest,
    write_json,
    write_run_metadata,
    write_safetensors,
)
from rank1.autointerp.categories import PAPER_TOP_LEVEL_SCHEME
from rank1.autointerp.stage import build_components, run_stage
from rank1.config import results_dir
from rank1.dashboard import token_bytes, write_dashboard
from rank1.models import load_tokenizer
from rank1.runs import check_same_identity
from rank1.sae.alive import ALIVE_RULE, training_window_alive
from rank1.sae.categories import (
    DENSITIES,
    EXPLAINER,
    CategoryError,
    categorize,
    category_densities,
    feature_table,
    read_categories,
    read_explanations,
)
from rank1.sae.config import (
    AutointerpConfig,
    DensitiesConfig,
    DonutConfig,
    SaeConfig,
    SaeDashboardConfig,
    SaeFeaturesConfig,
)
from rank1.sae.dashboard import build_payloads
from rank1.sae.features import (
    COLLECTOR,
    JumpReluColumns,
    annotate_features,
    latent_name,
    latent_statistics,
    load_features,
)
from rank1.sae.plots import plot_donut
from rank1.sae.splice import heldout_items, loss_gap
from rank1.sae.split import SaeError, Split, heldout_split, input_statistics
from rank1.sae.train import evaluate_sae, load_sae, save_inference_sae, train_sae
from rank1.store import Store, StoreError, check_writable, open_for_run
from rank1.topk import Columns, compute_topk, decode_vocab, used_token_ids

log = logging.getLogger(__name__)

Report = Callable[[str], Any]  # where a stage's closing lines go: print in the scripts


def sae_folder(cfg, run_name: str) -> Path:
    """The SAE folder of 3.0: ``cfg.out``, else ``results/<profile>/sae/<run>``."""
    return Path(cfg.out) if getattr(cfg, "out", None) else results_dir(cfg.profile, K.SAE_STAGE, run_name)


def load_run_features(opts, folder: str | None = None):
    """(run, features folder, top-k result, per-latent tensors) of the run ``opts`` names (any
    :class:`rank1.runs.RunOptions`): ``folder``, else ``results/<profile>/sae_features/<run>``; features made from
    another checkpoint are refused."""
    run = opts.resolve_run()
    src = Path(folder) if folder else results_dir(opts.profile, K.SAE_FEATURES_STAGE, run.name)
    res, latents = load_features(src)
    check_same_identity(run.identity(), res.meta["identity"], f"SAE features {src}")
    return run, src, res, latents


def _autointerp_folder(cfg, run_name: str) -> Path:
    return Path(cfg.autointerp) if cfg.autointerp else results_dir(cfg.profile, K.SAE_AUTOINTERP_STAGE, run_name)


# ---------------------------------------------------------------- 3.0_train_sae.py


def run_train_sae(cfg: SaeConfig, report: Report = log.info) -> Path:
    """3.0: train (or resume, or skip when finished) the SAE of the run's store, evaluate it, save it; reports its
    held-out metrics."""
    folder = _train_or_skip(cfg)
    report(f"SAE: {folder}\n{_metrics_line(read_json(folder / K.SAE_METRICS_JSON))}")
    return folder


def _train_or_skip(cfg: SaeConfig) -> Path:
    """Check the inputs; skip a finished SAE of the same settings, refuse one of other settings, else train."""
    run = cfg.resolve_run()
    src = Path(cfg.store) if cfg.store else results_dir(cfg.profile, "lora_activations", run.name)
    store = open_for_run(src, run.identity())
    if store.manifest.get("kind") != "lora":
        raise SaeError(f"{src} is a {store.manifest.get('kind')!r} store; the SAE reads the LoRA store of 2.0")
    d_in = len(store.sites)
    if cfg.k > cfg.expansion * d_in:
        raise SaeError(f"k={cfg.k} is larger than the dictionary ({cfg.expansion} x {d_in} adapters = "
                       f"{cfg.expansion * d_in} latents); lower --k or raise --expansion")
    split = heldout_split(store, cfg.heldout_frac, cfg.batch_size, cfg.skip_first_tokens)
    folder = sae_folder(cfg, run.name)
    done = folder / K.CONFIG_JSON
    # config.json holds every option at its top level: the settings and the store are compared one by one
    if reuse_finished(done, {**cfg.settings(), "store_key": store.manifest["store_key"]}, cfg.overwrite,
                      "pass --overwrite to retrain it, or --out DIR") is not None:
        return folder
    key = settings_digest({"settings": cfg.settings(), "store_key": store.manifest["store_key"]})
    check_writable(folder.parent if not folder.exists() else folder)
    done.unlink(missing_ok=True)
    _train_and_save(cfg, run, store, src, split, folder, key)
    return folder


def _train_and_save(cfg: SaeConfig, run, store: Store, src: Path, split: Split, folder: Path, key: str) -> None:
    """Train, save and evaluate the SAE (held-out metrics, loss gap), then write its metrics, log and config."""
    import sae_lens

    trained, report = train_sae(cfg, store, split, folder)
    save_inference_sae(trained, folder)
    sae = sae_lens.SAE.load_from_disk(folder, device=str(cfg.torch_device())).eval()
    metrics: dict[str, Any] = {"heldout": evaluate_sae(sae, store, split), "split": split.describe(store),
                               "alive": training_window_alive(sae, store, split, cfg, report["tokens"]),
                               "training": {k: report[k] for k in ("steps", "tokens", "dead_frac_training")}}
    if cfg.loss_gap:
        loaded = run.load(cfg.precision)
        items = heldout_items(store, split, loaded.tokenizer, cfg.loss_gap_tokens)
        mean_S = input_statistics(store, split)["mean_S"].float()
        metrics["loss_gap"] = loss_gap(loaded, sae, items, cfg.batch_tokens, mean_S, cfg.skip_first_tokens)
    write_json(folder / K.SAE_METRICS_JSON, metrics)
    write_json(folder / K.SAE_TRAIN_LOG_JSON, report["log"])
    h, alive, gap = metrics["heldout"], metrics["alive"], metrics.get("loss_gap", {})
    write_run_metadata(folder, cfg, {
        "identity": store.identity, "store": str(src), "store_key": store.manifest["store_key"], "settings_key": key,
        "sites": store.sites, "n_tokens": store.n_tokens, "split": split.describe(store),
        "normalization": report["normalization"], "sae_lens_version": sae_lens.__version__,
        "sae": {"training_architecture": trained.cfg.architecture(), "saved_architecture": sae.cfg.architecture(),
                "d_in": len(store.sites), "d_sae": sae.cfg.d_sae, "k": cfg.k,
                "skip_first_tokens": cfg.skip_first_tokens, "threshold": float(sae.threshold.detach().max())},
        "summary": {"fvu": h["fvu"], "l0": h["l0"], "n_alive": alive["n_alive"], "alive_frac": alive["alive_frac"],
                    "alive_window_tokens": alive["window_tokens"],
                    "loss_gap_share": gap.get("recovered_vs_zero", {}).get("value"),
                    "loss_gap_share_vs_mean": gap.get("recovered_vs_mean", {}).get("value")}})
    shutil.rmtree(folder / K.CHECKPOINTS_DIR, ignore_errors=True)


def _share_text(s: dict[str, Any]) -> str:
    return "undefined" if s["value"] is None else f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def _metrics_line(m: dict[str, Any]) -> str:
    """One line of the held-out metrics of ``sae_metrics.json``, the alive count (training window) and the
    loss-gap shares when measured."""
    h, a = m["heldout"], m["alive"]
    line = (f"held-out ({h['n_tokens']} tokens): FVU {h['fvu']:.4f} (mean over adapters "
            f"{h['fvu_mean_over_adapters']:.3f}), L0 {h['l0']:.2f}, {h['n_firing']} latents fire there; alive "
            f"{a['n_alive']}/{a['d_sae']} (fired in the last {a['window_tokens']} training tokens)")
    if "loss_gap" in m:
        g = m["loss_gap"]
        line += (f"; CE base {g['ce_base']:.4f}, mean-ablated {g['ce_mean']:.4f}, LoRA {g['ce_lora']:.4f}, spliced "
                 f"{g['ce_spliced']:.4f}: loss-gap share {_share_text(g['recovered_vs_zero'])} vs zero ablation, "
                 f"{_share_text(g['recovered_vs_mean'])} vs mean ablation")
    return line


# ---------------------------------------------------------------- 3.1_collect_sae_features.py


def run_collect_sae_features(cfg: SaeFeaturesConfig, report: Report = log.info) -> Path:
    """3.1: top examples and statistics of every alive latent of the run's SAE (alive as 3.0 counted it:
    :mod:`rank1.sae.alive`); returns the output folder."""
    run = cfg.resolve_run()
    src = Path(cfg.store) if cfg.store else results_dir(cfg.profile, "lora_activations", run.name)
    sae_dir = Path(cfg.sae) if cfg.sae else results_dir(cfg.profile, K.SAE_STAGE, run.name)
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.SAE_FEATURES_STAGE, run.name)
    store = open_for_run(src, run.identity())
    sae, sae_meta = load_sae(sae_dir, store, cfg.device)
    alive_3_0 = _saved_alive(sae_dir)
    if cfg.k > store.n_tokens:
        raise StoreError(f"k={cfg.k} is larger than the store's {store.n_tokens} tokens; lower --k")
    settings = {k: getattr(cfg, k) for k in ("k", "context", "n_per_decile", "n_random", "seed")}
    done = folder / K.CONFIG_JSON
    if reuse_finished(done, {"store_key": store.manifest["store_key"], "sae_settings_key": sae_meta["settings_key"],
                             "settings": settings}, cfg.overwrite) is not None:
        report(f"SAE features: {folder}")
        return folder
    check_writable(folder.parent if not folder.exists() else folder)
    done.unlink(missing_ok=True)

    skip = int(sae_meta.get("skip_first_tokens", 0))
    stats = latent_statistics(sae, store, cfg.device, skip)
    n_counted = int(stats["n_tokens"])
    L = sae.cfg.d_sae
    alive = [i for i in alive_3_0["latents"] if stats["firing_count_L"][i] > 0]
    silent = len(alive_3_0["latents"]) - len(alive)  # alive in 3.0's pass, silent in this one (device numerics)
    if not alive:
        raise SaeError(f"no alive latent of the SAE in {sae_dir} fires on the store {src}; retrain it (3.0)")
    if silent:
        log.warning("%d of the %d alive latents of 3.0 fire on no store token here (another device's rounding at "
                    "the threshold); they have no examples and are left out", silent, alive_3_0["n_alive"])
    log.info("%d alive latents of %d (3.0: fired in the last %d training tokens); %d latents fire on the store's %d "
             "tokens (first %d of each document left out)", len(alive), L, alive_3_0["window_tokens"],
             int((stats["firing_count_L"] > 0).sum()), n_counted, skip)
    columns = Columns([latent_name(i, L) for i in alive], [{"latent": i} for i in alive],
                      JumpReluColumns(sae, alive, cfg.device, skip), cfg.block)
    result = compute_topk(store, active_frac=0.0, columns=columns, positive_only=True, **settings)
    result.vocab = decode_vocab(load_tokenizer(run.model_id), used_token_ids(result))
    latents = {**stats, "W_dec_LS": sae.W_dec.detach().float().cpu().contiguous(),
               "feature_of_latent_L": torch.full((L,), -1, dtype=torch.int64)}
    latents["feature_of_latent_L"][alive] = torch.arange(len(alive))
    annotate_features(result.features, latents, store.sites)
    result.save(folder)
    write_safetensors(folder / K.SAE_LATENTS, latents)
    write_run_metadata(folder, cfg, {
        "kind": "sae", "settings": settings, "active": "fires (activation > 0)", "identity": store.identity,
        "store": str(src), "store_key": store.manifest["store_key"], "sae": str(sae_dir),
        "sae_settings_key": sae_meta["settings_key"], "sites": store.sites, "n_tokens": store.n_tokens,
        "n_docs": store.manifest["n_docs"], "corpus": store.manifest["corpus"], "skip_first_tokens": skip,
        "n_tokens_encoded": n_counted, "d_sae": L, "n_alive": len(alive), "alive_rule": ALIVE_RULE,
        "alive_window_tokens": alive_3_0["window_tokens"], "n_alive_without_examples": silent,
        "n_firing_in_store": int((stats["firing_count_L"] > 0).sum()), "sae_summary": sae_meta.get("summary", {})})
    report(f"SAE features: {folder}")
    return folder


def _saved_alive(sae_dir: Path) -> dict[str, Any]:
    """3.0's alive latents (``alive`` of its ``sae_metrics.json``)."""
    alive = read_json(sae_dir / K.SAE_METRICS_JSON).get("alive")
    if alive is None:
        raise SaeError(f"{sae_dir / K.SAE_METRICS_JSON} has no alive latents (an SAE trained before they were "
                       f"counted); retrain it with 3_lora_sae/3.0_train_sae.py --overwrite")
    return alive


# ---------------------------------------------------------------- 3.2_generate_sae_dashboard.py


def run_generate_sae_dashboard(cfg: SaeDashboardConfig, report: Report = log.info) -> Path:
    """3.2: the static feature dashboard of 3.1's features, with 3.3's explanations and categories when they
    exist; returns the dashboard folder."""
    run, _, res, latents = load_run_features(cfg, cfg.features)
    interp = _autointerp_folder(cfg, run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.SAE_DASHBOARD_STAGE, run.name)
    names = [f["name"] for f in res.features]
    explanations = read_explanations(interp)
    categories = read_categories(interp, names, required=False)
    check_writable(out.parent)
    pieces = token_bytes(load_tokenizer(run.model_id), res.vocab)  # tokens that hold part of a character
    index, pages = build_payloads(res, latents, explanations, categories, f"SAE features: {run.name}",
                                  cfg.n_examples, cfg.context, cfg.page_size, token_bytes=pieces)
    write_dashboard(out, index["title"], "sae.js", index, pages)
    report(f"dashboard: {out / K.DASHBOARD_INDEX} ({len(names)} features; explanations for {len(explanations)}, "
           f"categories for {len((categories or {}).get('features', {}))})")
    return out


# ---------------------------------------------------------------- 3.3_autointerp/3.3.0_autointerp.py


def run_autointerp(cfg: AutointerpConfig, report: Report = log.info) -> Path:
    """3.3.0: explain and score every SAE feature with stage 2's autointerp
    (:func:`rank1.autointerp.stage.run_stage`); returns the output folder."""
    folder = run_stage(cfg, "sae", K.SAE_FEATURES_STAGE, K.SAE_AUTOINTERP_STAGE, COLLECTOR)
    report(f"autointerp: {folder}")
    return folder


# ---------------------------------------------------------------- 3.3_autointerp/3.3.1_categorize.py


def run_categorize(cfg: AutointerpConfig, report: Report = log.info) -> Path:
    """3.3.1: sort the explained features into the paper's 7 top-level categories (categories.json beside the
    explanations; skipped when it is up to date with its inputs, refused when made from others unless --overwrite);
    returns that folder."""
    run, src, res, _ = load_run_features(cfg, cfg.topk)
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.SAE_AUTOINTERP_STAGE, run.name)
    explanations = folder / K.AUTOINTERP_RESULTS
    if not explanations.is_file():
        raise CategoryError(f"{explanations} is missing: explain the features first with {EXPLAINER}")
    cfg.categories = PAPER_TOP_LEVEL_SCHEME.name
    _, _, categoriser = build_components(cfg)
    inputs = {"features": str(src), "store_key": res.meta["store_key"],
              "sae_settings_key": res.meta["sae_settings_key"],
              "explanations_sha256": file_sha256(explanations), "categoriser": categoriser.describe()}
    out = folder / K.CATEGORIES_JSON
    if reuse_finished(out, {f"inputs.{k}": v for k, v in inputs.items()}, cfg.overwrite) is None:
        cats = categorize(res, explanations, categoriser, cfg.options(), cfg.options().concurrency)
        write_json(out, {**cats, "config": public_config(cfg), "argv": public_argv(sys.argv),
                         "identity": res.meta["identity"], "inputs": inputs})
    d = read_json(out)
    counts = Counter(f["category"] for f in d["features"].values())
    for name in d["categories"]:
        report(f"{name:32s} {counts.get(name, 0):5d} features")
    report(f"uncategorised: {d['n_explained'] - len(d['features'])} of {d['n_explained']} explained features "
           f"(and {len(res.features) - d['n_explained']} not explained)\ncategories: {out}")
    return folder


# ---------------------------------------------------------------- 3.3_autointerp/3.3.2_compute_activation_densities.py


def run_compute_activation_densities(cfg: DensitiesConfig, report: Report = log.info) -> Path:
    """3.3.2: activation-mass and firing-count shares per category and subcategory (category_densities.json
    beside categories.json; skipped when it is up to date with its inputs, refused when made from others unless
    --overwrite); returns that folder."""
    run, src, res, _ = load_run_features(cfg, cfg.features)
    folder = _autointerp_folder(cfg, run.name)
    categories = read_categories(folder, [f["name"] for f in res.features])
    inputs = {"features": str(src), "store_key": res.meta["store_key"],
              "sae_settings_key": res.meta["sae_settings_key"],
              "categories_sha256": file_sha256(folder / K.CATEGORIES_JSON)}
    out = folder / K.CATEGORY_DENSITIES_JSON
    if reuse_finished(out, {f"inputs.{k}": v for k, v in inputs.items()}, cfg.overwrite) is None:
        densities = category_densities(feature_table(res.features), categories)
        config = {k: v for k, v in public_config(cfg).items() if k != "overwrite"}  # what was computed, not how
        write_json(out, {"config": config, "argv": public_argv(sys.argv), "identity": res.meta["identity"],
                         "inputs": inputs, "n_features": len(res.features), **densities})
    d = read_json(out)
    for name, c in d["categories"].items():
        report(f"{name:32s} {c['n_features']:5d} features  mass {c['mass_share']:6.1%}  firing "
               f"{c['firing_share']:6.1%}")
    report(f"uncategorised: {d['uncategorised']['n_features']} features "
           f"({d['uncategorised']['mass_share_of_all']:.1%} of all mass)\ndensities: {out}")
    return folder


# ---------------------------------------------------------------- 3.3_autointerp/3.3.3_create_donut_fig.py


def run_create_donut_fig(cfg: DonutConfig, report: Report = log.info) -> Path:
    """3.3.3: Figure 3 (and its firing-count twin) from category_densities.json, written beside it; returns
    that folder."""
    run = cfg.resolve_run()
    folder = _autointerp_folder(cfg, run.name)
    path = folder / K.CATEGORY_DENSITIES_JSON
    if not path.is_file():
        raise CategoryError(f"{path} is missing: compute it first with {DENSITIES}")
    densities = read_json(path)
    check_same_identity(run.identity(), densities["identity"], f"category densities {path}")
    for measure in cfg.measures:
        stem = folder / (K.FIGURE3_STEM if measure == "mass" else f"{K.FIGURE3_STEM}_{measure}")
        for p in plot_donut(densities, measure, stem, f"{run.name}: SAE features by category"):
            report(f"figure: {p}")
    return folder
