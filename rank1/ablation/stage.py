"""Stage 1, one function per script of ``1_lora_adapter_ablations/``: resolve and check the run and the
sample, measure (``rank1.ablation.sweep``, ``rank1.ablation.greedy``), write the results into
``results/<profile>/ablations/<run>/`` and draw the figures from them (``rank1.ablation.plots``).

A finished result is reused only when it was made from the same weights and sample (else an error names
the difference); ``--overwrite`` recomputes. A killed sweep continues from its last finished batch.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rank1 import constants as K
from rank1.ablation.config import AblationConfig
from rank1.ablation.greedy import GreedyResult, carry_fraction, greedy_removal
from rank1.ablation.plots import by_type, figure1, iterative, token_kl
from rank1.ablation.sweep import (
    DCE_MEANING,
    KL_DIRECTION,
    MEAN_MEANING,
    SweepResult,
    class_summary,
    draw_sample,
    estimates,
    plan_ablations,
    run_sweep,
    summarize,
    tokenize_sample,
)
from rank1.artifacts import (
    read_json,
    record_timings,
    reuse_finished,
    settings_digest,
    write_json,
    write_run_metadata,
    write_safetensors,
)
from rank1.config import results_dir
from rank1.data import IGNORE_INDEX, load_reasoning_records
from rank1.lora import AdapterSite, verify_adapter
from rank1.models import context_length, load_tokenizer, num_layers
from rank1.runs import Run, RunError
from rank1.tokens import token_class

log = logging.getLogger(__name__)
SAMPLE_KEYS = ("dataset", "n_samples", "seed", "max_tokens")
GREEDY_KEYS = (*SAMPLE_KEYS, "greedy_samples", "greedy_rescore_every")
BY_TYPE_COPIED = ("run", "identity", "config", "kl_direction", "dce", "means", "sample", "sites", "type")


# ---------------------------------------------------------------- run, sample, results


def resolve_ablation_run(cfg: AblationConfig) -> Run:
    """The run to ablate: rank 1 (one scalar per adapter), every adapter its config names present."""
    run = cfg.resolve_run(require_rank=1)
    if run.kind != "lora":
        raise RunError(f"{run.name} is a full finetune: ablations need a LoRA run")
    check_adapter_complete(run)
    return run


def check_adapter_complete(run: Run) -> int:
    """Every (layer, projection) the adapter's config targets has its A and B saved (a missing one
    would be loaded as B = 0, and its ablation would silently measure nothing)."""
    cfg = run.adapter_config
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted(set(targets) - set(K.PROJECTIONS))
    if unknown:
        raise RunError(f"{run.weights_dir}: target_modules {unknown} are not among {K.PROJECTIONS}")
    layers = cfg.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    layers = list(layers) if layers else list(range(num_layers(run.model_id)))
    try:
        return verify_adapter(run.weights_dir, layers, 1, tuple(p for p in K.PROJECTIONS if p in targets))
    except RuntimeError as e:
        raise RunError(f"{e}; retrain, or pass the complete adapter") from None


def save_per_token(path: Path, result: SweepResult, items: list[dict[str, list[int]]]) -> None:
    """Per-token arrays of one sweep (float32) with the token ids they were measured on, written atomically."""
    measured_rows = [[t for t in range(len(it["labels"]) - 1) if it["labels"][t + 1] != IGNORE_INDEX] for it in items]
    tensors = {
        "kl": torch.from_numpy(result.kl_AN.astype(np.float32)),
        "dce": torch.from_numpy(result.dce_AN.astype(np.float32)),
        "ce_full": torch.from_numpy(result.ce_full_N.astype(np.float32)),
        "seq_ptr": torch.from_numpy(result.seq_ptr.astype(np.int64)),
        "positions": torch.tensor([t for rows in measured_rows for t in rows], dtype=torch.long),
        "input_ids": torch.tensor([t for it in items for t in it["input_ids"]], dtype=torch.long),
        "input_ptr": torch.tensor(np.cumsum([0] + [len(it["input_ids"]) for it in items]), dtype=torch.long),
    }
    meta = {"ablations": json.dumps([a.name for a in result.ablations]), "kl_direction": KL_DIRECTION,
            "layout": "kl/dce: [ablations, measured tokens]; tokens of sample sequence s are columns "
                      "seq_ptr[s]:seq_ptr[s+1]; positions[n] is the position t whose next token t+1 is "
                      "predicted; input_ids of sequence s are input_ids[input_ptr[s]:input_ptr[s+1]]"}
    write_safetensors(path, tensors, meta)


def load_per_token(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    with safe_open(str(path), framework="pt") as f:
        names = json.loads(f.metadata()["ablations"])
    return load_file(str(path)), names


def output_dir(cfg: AblationConfig, run: Run) -> Path:
    return results_dir(cfg.profile, K.ABLATION_STAGE, run.name)


def load_sample(cfg: AblationConfig, run: Run, tokenizer) -> tuple[list[int], list[dict[str, list[int]]], str]:
    """(record indices, tokenized sequences, data source) of the configured sample; checks it first."""
    source = cfg.dataset_path()
    records = load_reasoning_records(source)
    indices = draw_sample(len(records), cfg.n_samples, cfg.seed, source)
    return indices, tokenize_sample(tokenizer, records, indices, cfg.max_tokens, context_length(run.model_id)), source


def sweep_report(cfg: AblationConfig, run: Run, sites: Sequence[AdapterSite], indices: list[int], items: list[dict],
                 source: str, result: SweepResult) -> dict[str, Any]:
    """The JSON of one sweep: how it was made, the sample, and the means with CIs per family."""
    return {
        "run": run.name, "identity": run.identity(), "config": cfg, "families": sorted({a.family for a in
                                                                                       result.ablations}),
        "kl_direction": KL_DIRECTION, "dce": DCE_MEANING, "means": MEAN_MEANING,
        "sample": {"source": source, **cfg.sample_key(), "indices": indices,
                   "n_tokens": [len(it["input_ids"]) for it in items],
                   "n_measured": np.diff(result.seq_ptr).tolist()},
        "sites": [[s.layer, s.proj] for s in sites],
        "ablations": [{"name": a.name, "family": a.family, "n_adapters": len(a.sites), "first_layer": a.start}
                      for a in result.ablations],
        "cost": {"batches": result.n_batches, "cached_prefix": cfg.cached_prefix,
                 "peak_cache_bytes": result.peak_cache_bytes, "cache_limit_mb": cfg.cache_limit_mb,
                 "layer_forwards_per_batch": sum(len({s.layer for s in sites}) - (a.start if cfg.cached_prefix else 0)
                                                 for a in result.ablations)},
        **summarize(result, sites, cfg.n_resamples),
    }


def existing_result(path: Path, run: Run, cfg: AblationConfig, keys: Sequence[str] = SAMPLE_KEYS) -> dict | None:
    """A finished result at ``path`` for this run and these config ``keys`` (None if absent or
    ``--overwrite``); one made from other weights or with other settings is an error, not a silent reuse."""
    identity = run.identity()
    expected = {f"identity.{k}": identity[k] for k in ("base_model", "weights_sha256")}
    return reuse_finished(path, {**expected, **{f"config.{k}": getattr(cfg, k) for k in keys}}, cfg.overwrite)


def results_folder(cfg: AblationConfig) -> Path:
    """Where the figure scripts read: ``--results_folder``, else the run's results folder (no model load)."""
    if cfg.results_folder:
        return Path(cfg.results_folder)
    if cfg.adapter:
        return results_dir(cfg.profile, K.ABLATION_STAGE, Path(cfg.adapter).name)
    return output_dir(cfg, cfg.resolve_run(require_rank=None))


def read_result(folder: Path, name: str, producer: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run 1_lora_adapter_ablations/{producer} first")
    return read_json(path)


def measure(cfg: AblationConfig, families: Sequence[str], json_name: str, tokens_name: str | None,
            desc: str) -> Path:
    """Resolve and check the run and the sample, sweep the families, write JSON (+ per-token side file,
    config.json, argv.json) into the run's results folder; skip when that JSON exists."""
    run = resolve_ablation_run(cfg)
    out = output_dir(cfg, run)
    if existing_result(out / json_name, run, cfg, (*SAMPLE_KEYS, "families")) is not None:
        log.info("%s exists; skipping (--overwrite recomputes)", out / json_name)
        return out / json_name
    loaded = run.load(cfg.precision)
    indices, items, source = load_sample(cfg, run, loaded.tokenizer)
    sites = loaded.sites
    ablations = plan_ablations(sites, families)
    key = settings_digest({"identity": run.identity(), "sample": cfg.sample_key(),
                           "ablations": [a.name for a in ablations], "cache_limit_mb": cfg.cache_limit_mb,
                           "precision": cfg.precision})
    partial = out / K.ABLATION_PARTIAL_DIR / Path(json_name).stem
    log.info("%d ablations (%s) on %d sequences, %d assistant tokens", len(ablations), ",".join(families),
             len(items), sum(sum(t != IGNORE_INDEX for t in it["labels"][1:]) for it in items))
    result = run_sweep(loaded, items, ablations, cfg.cache_limit_mb, cfg.token_chunk, cfg.cached_prefix,
                       partial, key, desc)
    report = sweep_report(cfg, run, sites, indices, items, source, result)
    if tokens_name:
        save_per_token(out / tokens_name, result, items)
        report["per_token_file"] = tokens_name
    write_run_metadata(out, cfg, {"identity": run.identity()})
    record_timings(out, json_name, seconds=result.seconds)
    write_json(out / json_name, report)
    shutil.rmtree(partial, ignore_errors=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()
    log.info("%d ablations in %.0f s (%d batches, peak cache %.0f MiB); wrote %s", len(ablations), result.seconds,
             result.n_batches, result.peak_cache_bytes / 2**20, out / json_name)
    return out / json_name


# ---------------------------------------------------------------- 1.0_generate_ablation_data.py


def run_generate_ablation_data(cfg: AblationConfig) -> Path:
    """Leave-one-layer-out, per-adapter and by-type ablations (the families asked); returns the results folder."""
    return measure(cfg, cfg.families, K.ABLATION_JSON, K.ABLATION_TOKENS, "ablation sweep").parent


# ---------------------------------------------------------------- 1.1_visualize_ablation_results.py


def findings(report: dict) -> list[str]:
    """Plain-language summary: the largest layers, adapters and types."""
    lines = []
    if "layer" in report:
        kl = np.array(report["layer"]["kl"]["mean"])
        top = np.argsort(-kl)[:5]
        lines.append("layers by KL: " + ", ".join(f"L{report['layer']['layers'][i]} {kl[i]:.3g}" for i in top)
                     + f" (median layer {np.median(kl):.3g})")
    if "adapter" in report:
        ad = report["adapter"]
        cells = [(v, f"L{lay}.{p}") for p, row in zip(ad["projections"], ad["kl"]["mean"], strict=True)
                 for lay, v in zip(ad["layers"], row, strict=True) if v is not None]
        lines.append("adapters by KL: " + ", ".join(f"{n} {v:.3g}" for v, n in sorted(cells, reverse=True)[:8]))
    if "adapter_mean_by_projection" in report:
        by = report["adapter_mean_by_projection"]
        lines.append("mean single-adapter KL by projection: " + ", ".join(
            f"{p} {m:.3g} [{lo:.3g}, {hi:.3g}]" for p, m, lo, hi in
            zip(by["projections"], by["kl"]["mean"], by["kl"]["lo"], by["kl"]["hi"], strict=True)))
    if "type" in report:
        t = report["type"]
        lines.append("whole types removed: " + ", ".join(
            f"{n} {m:.3g}" for n, m in zip(t["names"], t["kl"]["mean"], strict=True)))
    for family, r in (report.get("rankings") or {}).items():
        if "top_vs_runner_up" in r:
            lines.append(f"{family} ranking: {ranking_text(r['top_vs_runner_up'])}")
    return lines


def ranking_text(t: dict) -> str:
    """The paired test of the largest against the runner-up in words (for the log and the report)."""
    tell = "separated" if t["separated"] else "cannot tell" + ("" if t["powered"] else " (underpowered)")
    return (f"{t['top']} - {t['runner_up']} = {t['mean_diff']:.3g} [{t['lo']:.3g}, {t['hi']:.3g}] nats, larger on "
            f"{t['units_positive']} of {t['n_units']} sequences, sign-flip p {t['p_sign_flip']:.3g} (smallest "
            f"attainable {t['min_p_possible']:.3g}; {t['distinct_resamples']} distinct bootstrap resamples): {tell}")


def run_visualize_ablation_results(cfg: AblationConfig) -> Path:
    """Figure 1 from the saved results (no model), and the findings in words; returns the results folder."""
    folder = results_folder(cfg)
    report = read_result(folder, K.ABLATION_JSON, "1.0_generate_ablation_data.py")
    for line in findings(report):
        log.info("%s", line)
    for path in figure1(report, folder / K.FIGURE1_STEM):
        log.info("wrote %s", path)
    return folder


# ---------------------------------------------------------------- lora_ablation_all_by_type.py


def run_ablation_all_by_type(cfg: AblationConfig) -> Path:
    """The by-type family: copied from 1.0's results of the same run and sample, else measured; then its
    figure. Returns the results folder."""
    run = resolve_ablation_run(cfg)
    out = output_dir(cfg, run)
    if existing_result(out / K.BY_TYPE_JSON, run, cfg) is None:
        full = existing_result(out / K.ABLATION_JSON, run, cfg, ()) if not cfg.overwrite else None
        same_sample = full is not None and all(full["config"].get(k) == getattr(cfg, k) for k in SAMPLE_KEYS)
        if same_sample and "type" in full:
            write_json(out / K.BY_TYPE_JSON, {**{k: full[k] for k in BY_TYPE_COPIED}, "source": K.ABLATION_JSON})
            log.info("by-type ablations taken from %s", out / K.ABLATION_JSON)
        else:
            measure(cfg, ["type"], K.BY_TYPE_JSON, None, "by-type ablations")
    report = read_json(out / K.BY_TYPE_JSON)
    for name, m, lo, hi in zip(report["type"]["names"], *(report["type"]["kl"][k] for k in ("mean", "lo", "hi")),
                               strict=True):
        log.info("%-10s KL %.4g [%.4g, %.4g]", name, m, lo, hi)
    for path in by_type(report, out / K.BY_TYPE_STEM):
        log.info("wrote %s", path)
    return out


# ---------------------------------------------------------------- iterative_mlp_ablation_by_matrix.py


def greedy_report(cfg: AblationConfig, run: Run, sites: Sequence[AdapterSite], indices: list[int], source: str,
                  n_seq: int, n: int, res: GreedyResult) -> dict[str, Any]:
    """The JSON of one greedy removal of ``n`` candidates on the first ``n_seq`` sample sequences."""
    curve = estimates(res.kl_SK, cfg.n_resamples)
    return {
        "run": run.name, "identity": run.identity(), "config": cfg, "kl_direction": KL_DIRECTION,
        "means": MEAN_MEANING, "sample": {"source": source, **cfg.sample_key(), "indices": indices[:n_seq]},
        "n_sequences": n_seq, "n_candidates": n,
        "order": [{"name": f"L{sites[c].layer}.{sites[c].proj}", "layer": sites[c].layer, "proj": sites[c].proj,
                   "kl_after": curve["mean"][k + 1]} for k, c in enumerate(res.order)],
        "curve": {"removed": list(range(n + 1)), "kl": curve},
        "carry_90": carry_fraction(np.asarray(curve["mean"])),
        "scoring_rounds": [[[f"L{sites[c].layer}.{sites[c].proj}", v] for c, v in r] for r in res.scores],
        "cost": {"suffix_runs": res.suffix_runs,
                 "exact_greedy_suffix_runs": n * (n + 1) // 2,
                 "rescore_every": cfg.greedy_rescore_every, "decoder_layer_calls": res.layer_forwards,
                 "naive_decoder_layer_calls": (n * (n + 1) // 2 + n + 1) * len({s.layer for s in sites})},
    }


def run_iterative_mlp_ablation(cfg: AblationConfig) -> Path:
    """Greedy removal of the MLP adapters (skipped when its result exists), then its figure; returns the
    results folder."""
    run = resolve_ablation_run(cfg)
    out = output_dir(cfg, run)
    path = out / K.ITERATIVE_JSON
    if existing_result(path, run, cfg, GREEDY_KEYS) is not None:
        log.info("%s exists; skipping (--overwrite recomputes)", path)
    else:
        loaded = run.load(cfg.precision)
        indices, items, source = load_sample(cfg, run, loaded.tokenizer)
        n_seq = min(cfg.greedy_samples or len(items), len(items))
        sites = loaded.sites
        candidates = [i for i, s in enumerate(sites) if s.is_mlp]
        if not candidates:
            raise RunError(f"{run.name} has no MLP adapters to remove")
        res = greedy_removal(loaded, items[:n_seq], candidates, cfg.greedy_rescore_every, cfg.token_chunk)
        n = len(candidates)
        report = greedy_report(cfg, run, sites, indices, source, n_seq, n, res)
        write_run_metadata(out, cfg, {"identity": run.identity()})
        record_timings(out, K.ITERATIVE_JSON, seconds=res.seconds)
        write_json(path, report)
        log.info("%d MLP adapters removed in %.0f s (%d suffix runs; exact greedy would score %d)", n, res.seconds,
                 res.suffix_runs, n * (n + 1) // 2)
    report = read_json(path)
    log.info("first removed: %s; last removed: %s; %d adapters carry 90%% of the all-MLP KL",
             ", ".join(o["name"] for o in report["order"][:5]), ", ".join(o["name"] for o in report["order"][-5:]),
             report["carry_90"])
    for p in iterative(report, out / K.ITERATIVE_STEM):
        log.info("wrote %s", p)
    return out


# ---------------------------------------------------------------- lora_layer_ablation_kl_visualization.py


def predicted_tokens(tensors: dict[str, torch.Tensor], tokenizer) -> list[str]:
    """The text of the token each measured position predicts (the next token), in sample order."""
    ptr, iptr = tensors["seq_ptr"].numpy(), tensors["input_ptr"].numpy()
    ids, pos = tensors["input_ids"].numpy(), tensors["positions"].numpy()
    seq_of = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    predicted = ids[iptr[seq_of] + pos + 1]
    return [tokenizer.decode([int(t)]) for t in predicted]


def run_layer_ablation_kl_visualization(cfg: AblationConfig) -> Path:
    """Per-token KL along one sample sequence for the costliest layers, and the KL by class of predicted
    token over the whole sample, from 1.0's per-token file (no model); returns the results folder."""
    folder = results_folder(cfg)
    report = read_result(folder, K.ABLATION_JSON, "1.0_generate_ablation_data.py")
    if "layer" not in report:
        raise ValueError(f"{folder / K.ABLATION_JSON} has no leave-one-layer-out results: run 1.0 with the "
                         f"layer family")
    tensors, names = load_per_token(folder / report["per_token_file"])
    ptr = tensors["seq_ptr"].numpy()
    n_seq = len(ptr) - 1
    if not 0 <= cfg.viz_sequence < n_seq:
        raise ValueError(f"--viz_sequence {cfg.viz_sequence} out of range: the sample has sequences 0..{n_seq - 1}")
    texts = predicted_tokens(tensors, load_tokenizer(report["identity"]["base_model"]))
    classes = np.array([token_class(t) for t in texts])
    shown = [n for n in names if n.startswith("L") and "." not in n or n in ("mlp", "attn", "all")]
    kl = tensors["kl"].double().numpy()
    summary = class_summary(kl[[names.index(n) for n in shown]], shown, classes)
    layer_kl = dict(zip([f"L{lay}" for lay in report["layer"]["layers"]], report["layer"]["kl"]["mean"], strict=True))
    top = sorted(layer_kl, key=lambda n: -layer_kl[n])[:cfg.viz_top]
    s = cfg.viz_sequence
    cols = slice(ptr[s], ptr[s + 1])
    write_json(folder / K.TOKEN_KL_JSON, {
        "run": report["run"], "identity": report["identity"], "kl_direction": report["kl_direction"],
        "token": "each position is classed by the token it predicts (the next token)",
        "top_layers": top, "sequence": s, "record_index": report["sample"]["indices"][s], **summary})
    title = (f"sequence {s} (record {report['sample']['indices'][s]}): per-token KL(P_full || P_ablated); "
             f"tick = predicted token")
    for path in token_kl(texts[cols], {n: kl[names.index(n), cols] for n in top},
                         {**summary, "mean_kl": {n: summary["mean_kl"][n] for n in top}}, title,
                         folder / K.TOKEN_KL_STEM):
        log.info("wrote %s", path)
    for n in top:
        log.info("%s removed: share of KL / share of tokens by predicted-token class: %s", n, ", ".join(
            f"{c} {k:.3f}/{t:.3f}" for c, k, t in zip(summary["classes"], summary["kl_share"][n],
                                                      summary["token_share"], strict=True)))
    return folder
