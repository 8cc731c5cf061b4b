"""Stage 2, one function per script of ``2_lora_activation_interp/``: the activation stores and their top-k
examples (LoRA side, the MLP-neuron baseline and the random-direction control of ``rank1.activations.control``),
the LoRA dashboard, the class shares of one side and LoRA vs. MLP vs. the control (Figure 2). The autointerp
scripts 2.2 / 2.7 / 2.6 run :func:`rank1.autointerp.stage.run_stage`.

Folders (``results_dir``): ``results/<profile>/{lora,mlp,random}_activations/<run>/`` (the store),
``results/<profile>/{lora,mlp,random}_topk/<run>/`` (top-k examples), ``results/<profile>/lora_dashboard/<run>/``,
``results/<profile>/<kind>_interpretability/<run>/`` and ``results/<profile>/lora_vs_mlp/<run>/``; ``--out``
replaces any of them. The MLP side belongs to the run too: its neurons are the run's base model's, sampled as
many per layer as the run has adapters per layer, and its corpus is the same. The analyses read saved
artifacts only and recompute in seconds, so they always rewrite their outputs (atomically).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors import safe_open

from rank1 import constants as K
from rank1.activations.config import CompareConfig, DashboardConfig, ExtractConfig, InterpretabilityConfig, TopKConfig
from rank1.activations.control import CONTROL_DIR, ensure_control_adapter
from rank1.activations.dashboard import build_payloads
from rank1.activations.interpretability import analyze, check_comparable, compare, load_autointerp, scheme_of
from rank1.activations.plots import plot_figure2, plot_interpretability
from rank1.artifacts import public_config, reuse_finished, write_json, write_run_metadata
from rank1.capture import KINDS, CaptureSpec, sample_neurons
from rank1.config import dataset_file, results_dir
from rank1.dashboard import token_bytes, write_dashboard
from rank1.lora import PROJECTIONS, SAVED_KEY_RE, adapter_vectors, parse_projections
from rank1.models import load_tokenizer, model_config
from rank1.runs import Run, check_same_identity, weights_sha256
from rank1.store import StoreError, check_writable, extract_store, load_corpus, open_for_run
from rank1.topk import TopKResult, compute_topk, decode_vocab, used_token_ids

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- stores (2.0, 2.4)


def store_folder(cfg, kind: str, run: Run) -> Path:
    return Path(cfg.out) if getattr(cfg, "out", None) else results_dir(cfg.profile, f"{kind}_activations", run.name)


def extract(cfg: ExtractConfig, kind: str) -> Path:
    """Write the ``kind`` ('lora' | 'mlp') store of the run over the corpus; returns its folder."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    run = cfg.resolve_run()
    folder = store_folder(cfg, kind, run)
    check_writable(folder.parent if not folder.exists() else folder)
    tokenizer = load_tokenizer(run.model_id)
    corpus = load_corpus(tokenizer, dataset_file(cfg.corpus_source, cfg.profile), cfg.max_tokens, cfg.max_docs,
                         cfg.block_size)
    per_layer = cfg.neurons_per_layer or _adapters_per_layer(run)
    spec = CaptureSpec(run, kind, cfg.precision, per_layer, cfg.neuron_seed)
    sites = _sites(spec)
    return extract_store(spec, corpus, folder, sites=sites, identity=run.identity(), shard_tokens=cfg.shard_tokens,
                         batch_tokens=cfg.batch_tokens, dtype=cfg.dtype, workers=cfg.num_procs, gpus=cfg.num_gpus,
                         overwrite=cfg.overwrite, extra={"config": public_config(cfg)})


def _adapters_per_layer(run: Run) -> int:
    """Adapters per layer of the run (7 for all projections), read from its adapter config."""
    targets = run.adapter_config.get("target_modules") or []
    return len(parse_projections(",".join(targets))) if targets else 7


def _sites(spec: CaptureSpec) -> list[dict]:
    """The site list, read from the adapter file (LoRA) or the model config (MLP) without loading weights;
    each worker checks that its loaded model has the same sites."""
    if spec.kind == "lora":
        with safe_open(str(spec.run.weights_dir / "adapter_model.safetensors"), framework="pt") as f:
            found = {(int(m.group(1)), m.group(2)) for m in map(SAVED_KEY_RE.search, f.keys()) if m}
        return [{"layer": lay, "name": p} for lay, p in sorted(found, key=lambda s: (s[0], PROJECTIONS.index(s[1])))]
    c = model_config(spec.run.model_id)
    neurons = sample_neurons(c.num_hidden_layers, c.intermediate_size, spec.neurons_per_layer, spec.seed)
    return [{"layer": li, "name": f"n{n}", "neuron": n} for li, idx in enumerate(neurons) for n in idx]


def extract_random_control(cfg: ExtractConfig) -> Path:
    """2.6: the random-direction control's store (``rank1.activations.control``): the run's sites, each read
    through a random direction of the trained A's norm with B = 0 (the base model), over the first
    ``random_max_tokens`` tokens of the LoRA store's corpus; returns the store folder. Its identity is the run's
    plus a ``control`` record, so the later steps take the same ``--run``."""
    run = cfg.resolve_run()
    folder = store_folder(cfg, "random", run)
    check_writable(folder.parent if not folder.exists() else folder)
    control, fresh = ensure_control_adapter(run, folder / CONTROL_DIR, cfg.random_seed, cfg.overwrite)
    tokenizer = load_tokenizer(run.model_id)
    corpus = load_corpus(tokenizer, dataset_file(cfg.corpus_source, cfg.profile),
                         cfg.random_max_tokens or cfg.max_tokens, cfg.max_docs, cfg.block_size)
    spec = CaptureSpec(control, "lora", cfg.precision)
    record = control.config["control"]
    identity = {**run.identity(), "control": {**record, "weights_sha256": weights_sha256(control.weights_dir,
                                                                                         run.model_id)}}
    return extract_store(spec, corpus, folder, sites=_sites(spec), identity=identity, shard_tokens=cfg.shard_tokens,
                         batch_tokens=cfg.batch_tokens, dtype=cfg.dtype, workers=cfg.num_procs, gpus=cfg.num_gpus,
                         overwrite=cfg.overwrite or fresh,  # a control drawn now invalidates shards of an older one
                         extra={"config": public_config(cfg), "kind": "random"})  # read as LoRA scalars


def run_extract_lora_activations(cfg: ExtractConfig) -> Path:
    """2.0: every adapter's scalar activation per token; returns the store folder."""
    return extract(cfg, "lora")


def run_extract_mlp_activations(cfg: ExtractConfig) -> Path:
    """2.4: the MLP-neuron baseline store; returns the store folder."""
    return extract(cfg, "mlp")


# ---------------------------------------------------------------- top-k examples (2.1, 2.5)


def precompute_topk(cfg: TopKConfig, kind: str) -> Path:
    """Top-k examples of the ``kind`` store of the run; returns the output folder."""
    run = cfg.resolve_run()
    src = Path(cfg.store) if cfg.store else results_dir(cfg.profile, f"{kind}_activations", run.name)
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, f"{kind}_topk", run.name)
    store = open_for_run(src, run.identity())
    if store.manifest.get("kind") != kind:
        raise StoreError(f"{src} is a {store.manifest.get('kind')!r} store, this step reads a {kind!r} store")
    done = folder / K.CONFIG_JSON
    settings = {k: getattr(cfg, k) for k in ("k", "context", "n_per_decile", "n_random", "active_frac", "seed")}
    expected = {"store_key": store.manifest["store_key"], "settings": settings}
    if reuse_finished(done, expected, cfg.overwrite) is not None:
        return folder
    check_writable(folder.parent if not folder.exists() else folder)
    done.unlink(missing_ok=True)
    result = compute_topk(store, **settings)
    result.vocab = decode_vocab(load_tokenizer(run.model_id), used_token_ids(result))
    result.save(folder)
    write_json(done, {**public_config(cfg), "kind": kind, "settings": settings, "identity": store.identity,
                      "store": str(src), "store_key": store.manifest["store_key"], "sites": store.sites,
                      "n_tokens": store.n_tokens, "n_docs": store.manifest["n_docs"],
                      "corpus": store.manifest["corpus"]})
    return folder


def run_precompute_lora_topk(cfg: TopKConfig) -> Path:
    """2.1: top-k examples of every LoRA feature; returns the top-k folder."""
    return precompute_topk(cfg, "lora")


def run_precompute_mlp_topk(cfg: TopKConfig) -> Path:
    """2.5: top-k examples of the MLP-neuron baseline; returns the top-k folder."""
    return precompute_topk(cfg, "mlp")


def run_precompute_random_topk(cfg: TopKConfig) -> Path:
    """2.6: top-k examples of the random-direction control; returns the top-k folder."""
    return precompute_topk(cfg, "random")


# ---------------------------------------------------------------- the LoRA dashboard (2.3)


def run_lora_activation_dashboard(cfg: DashboardConfig) -> Path:
    """The static HTML dashboard of 2.1's top-k examples and the run's adapter weights; returns its folder."""
    run = cfg.resolve_run()
    src = Path(cfg.topk) if cfg.topk else results_dir(cfg.profile, "lora_topk", run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, "lora_dashboard", run.name)
    res = TopKResult.load(src)
    check_same_identity(run.identity(), res.meta["identity"], f"top-k examples {src}")
    check_writable(out.parent)
    # the raw bytes of tokens that hold part of a character, so the page shows the character whole
    pieces = token_bytes(load_tokenizer(run.model_id), res.vocab)
    index, pages = build_payloads(res, adapter_vectors(run.weights_dir),
                                  f"LoRA activations: {run.name}", cfg.n_examples, token_bytes=pieces)
    write_dashboard(out, index["title"], "lora.js", index, pages)
    return out


# ---------------------------------------------------------------- class shares (2.3 analysis) and Figure 2 (2.8)


def _fmt(e: dict[str, Any], pct: bool = True) -> str:
    if e.get("value") is None:
        return "undefined"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}")
    return f"{f(e['value'])} [{f(e['lo'])}, {f(e['hi'])}]" if e.get("lo") is not None else f(e["value"])


def run_analyze_interpretability(cfg: InterpretabilityConfig) -> Path:
    """Class shares, held-out scores and categories of one side's autointerp, with their figure; returns the
    output folder."""
    run = cfg.resolve_run()
    src = Path(cfg.autointerp) if cfg.autointerp else results_dir(
        cfg.profile, K.AUTOINTERP_STAGE.format(kind=cfg.kind), run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.INTERPRETABILITY_STAGE.format(kind=cfg.kind),
                                                    run.name)
    records, config = load_autointerp(src)
    check_same_identity(run.identity(), config.get("identity") or {}, f"autointerp results {src}")
    check_writable(out)
    report = analyze(records, config.get("n_layers"), cfg.layer_bin, cfg.n_resamples, cfg.seed, scheme_of(config))
    report["source"] = str(src)
    for line in interpretability_findings(report):
        log.info("%s", line)
    write_json(out / K.INTERPRETABILITY_JSON, report)
    plot_interpretability(report, out / K.INTERPRETABILITY_STEM, f"{cfg.kind} features of {run.name}: autointerp "
                          f"({config.get('explainer')} explainer, {config.get('scorer')} scorer)")
    write_run_metadata(out, cfg, {"identity": config.get("identity"), "autointerp": str(src)})
    return out


def interpretability_findings(report: dict[str, Any]) -> list[str]:
    c = report["classes"]
    lines = [f"{c['n']} rated of {report['n_features']} features ({report['status']}): " +
             ", ".join(f"{k} {_fmt(v)}" for k, v in c["shares"].items())]
    for b in report.get("by_layer_bin", []):
        lines.append(f"layers {b['layers'][0]}-{b['layers'][1]} (n={b['n']}): monosemantic "
                     f"{_fmt(b['shares']['monosemantic'])}")
    for m, s in report["scores"].items():
        if s.get("mean"):
            lines.append(f"held-out {m}: mean balanced accuracy {_fmt(s['mean'], pct=False)} over {s['n']} features "
                         f"({s['n_undefined']} without a score)")
    return lines


def run_compare_lora_mlp(cfg: CompareConfig) -> Path:
    """LoRA directions vs. MLP neurons vs. the random-direction control from their autointerp folders (checked
    comparable), with Figure 2; returns the output folder. The control is left out, with a warning and
    ``"random": null`` in the JSON, only when ``--random`` is not given and its default folder does not exist."""
    run = cfg.resolve_run()
    dirs = {k: Path(v) if v else results_dir(cfg.profile, K.AUTOINTERP_STAGE.format(kind=k), run.name)
            for k, v in (("lora", cfg.lora), ("mlp", cfg.mlp), ("random", cfg.random))}
    if not cfg.random and not dirs["random"].exists():
        log.warning("no random-direction control at %s (run 2.6 first): Figure 2 compares LoRA and MLP only, and "
                    "the verdicts that need the control read 'cannot tell'", dirs["random"])
        dirs.pop("random")
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.COMPARE_STAGE, run.name)
    loaded = {k: load_autointerp(d) for k, d in dirs.items()}
    check_same_identity(run.identity(), loaded["lora"][1].get("identity") or {}, f"autointerp results {dirs['lora']}")
    check_comparable(loaded["lora"][1], loaded["mlp"][1], dirs["lora"], dirs["mlp"])
    if "random" in loaded:
        check_comparable(loaded["lora"][1], loaded["random"][1], dirs["lora"], dirs["random"], other="random")
    check_writable(out)
    comp = compare(loaded["lora"][0], loaded["mlp"][0], cfg.n_resamples, cfg.seed, scheme_of(loaded["lora"][1]),
                   random=loaded["random"][0] if "random" in loaded else None,
                   n_tokens={k: c.get("n_tokens") for k, (_, c) in loaded.items()}, density_bins=cfg.density_bins)
    comp["sources"] = {k: str(d) for k, d in dirs.items()} | ({} if "random" in dirs else {"random": None})
    comp["explainer"] = ((loaded["lora"][1].get("settings") or {}).get("explainer") or {}).get("kind")
    comp["n_tokens"] = {k: c.get("n_tokens") for k, (_, c) in loaded.items()}
    for line in comparison_findings(comp):
        log.info("%s", line)
    write_json(out / K.COMPARE_JSON, comp)
    lora_cfg = loaded["lora"][1]
    plot_figure2(comp, out / K.FIGURE2_STEM, f"LoRA directions vs. MLP neurons vs. random directions ({run.name}; "
                 f"{lora_cfg.get('explainer')} explainer, {lora_cfg.get('scorer')} scorer)")
    write_run_metadata(out, cfg, {"identity": lora_cfg.get("identity"), **{k: str(d) for k, d in dirs.items()}})
    return out


def comparison_findings(comp: dict[str, Any]) -> list[str]:
    cl = comp["classes"]
    chi = comp["chi_square"]
    names = {"lora": "LoRA", "mlp": "MLP", "random": "random directions"}
    lines = ["monosemantic features: " + ", ".join(f"{names[k]} {_fmt(cl[k]['shares']['monosemantic'])} "
                                                  f"(n={cl[k]['n']})" for k in cl) + "; paper 22.4% vs. 20.2%",
             "chi-square 2 x 3, LoRA vs. MLP features (polarities as separate units): " + (
                 "undefined" if chi["statistic"] is None else
                 f"{chi['statistic']:.2f} (dof {chi['dof']}, p {chi['p_value']:.3g})")]
    sites = comp["sites"]
    lines.append("monosemantic sites (either polarity): " + ", ".join(
        f"{names[k]} {_fmt(v['monosemantic'])} (n={v['n']})" for k, v in sites["shares"].items()))
    for k, d in sites["lora_minus"].items():
        lines.append(f"sites, LoRA minus {names[k]}: {_fmt(d)} ({d.get('test')})")
    dens = comp.get("density")
    if dens:
        lines.append("monosemantic share standardised to LoRA's firing densities: " + ", ".join(
            f"{names[k]} {'undefined' if v is None else f'{100 * v:.1f}%'}"
            for k, v in dens["standardised_to_lora"].items()))
        for b in dens["bins"]:
            lines.append(f"density {b['density'][0]:.3g}-{b['density'][1]:.3g}: " + ", ".join(
                f"{names[k]} {_fmt(b[k]['monosemantic']) if b[k]['n'] else '-'} (n={b[k]['n']})" for k in cl))
    for m, s in comp["scores"].items():
        lines.append(f"{m}: features without a score: " + ", ".join(f"{names[k]} {s[k]['n_undefined']}" for k in cl))
        mw = s["mann_whitney"]
        if mw["p_value"] is not None:
            lines.append(f"{m}: median LoRA {mw['median_a']:.3f} vs. MLP {mw['median_b']:.3f}, P(LoRA > MLP) "
                         f"{mw['effect']:.2f}, Mann-Whitney p {mw['p_value']:.3g}")
    for e in (comp.get("enrichment") or {}).values():
        paper = f" (paper {e['paper']}x)" if e.get("paper") else ""
        lines.append(f"enrichment {e['name']}: {_fmt(e['enrichment'], pct=False)} "
                     f"({e['lora_count']} LoRA / {e['mlp_count']} MLP; BH q {e['q_bh']:.3g}){paper}")
    return lines
