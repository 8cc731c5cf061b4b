"""Stage 5.4: behaviour rates, sparsity of the read and write directions, their top latents, figures.

Behaviour measure (exact and cheap): each held-out record is teacher-forced up to and including
``<|im_start|>answer\\n`` (its own trace, the base model's format) and the greedy next token is read; the behaviour
is present when that token is the marker's first token (``Product``), absent otherwise (normally ``Answer``).
All variants share the residual entering the hook layer (the layers below are the base model's in every variant:
the SAE-LoRA edits that layer's input, the standard LoRA adapts only layers ``layer..L-1``), so each variant runs
only the layers from there on. Rates carry percentile bootstrap CIs over prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import read_json, write_json, write_run_metadata
from rank1.sae_lora.behavior import INSIDE, OUTSIDE, teacher_forced_prefix
from rank1.sae_lora.adapter import (
    SaeLora,
    SaeLoraConfig,
    SaeLoraError,
    apply_adapter,
    load_adapter,
    pad_batch,
    residual_cache,
    run_name,
    sparsity_metrics,
    stack_cached,
)
from rank1.sae_lora.stage import data_folder, load_base, load_dataset, load_stage_sae, sae_folder
from rank1.stats import bootstrap_mean

log = logging.getLogger(__name__)

MEASURE = ("greedy next token after the teacher-forced held-out trace and '<|im_start|>answer\\n' is the marker's "
           "first token (one forward pass per prompt, no sampling)")


@torch.no_grad()
def next_tokens(runner, h_cache: list[torch.Tensor], prefix_ids: list[list[int]], layer: int, pad: int,
                edit=None, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(greedy next token id, log-softmax row) at the end of every prefix, layers ``layer..L-1`` run from the
    cached residual (``edit(h)`` applied first)."""
    ids_out, logp_out = [], []
    for i in range(0, len(prefix_ids), batch):
        items = [{"input_ids": p} for p in prefix_ids[i:i + batch]]
        ids, mask, _ = pad_batch(items, pad)
        h = stack_cached(h_cache[i:i + batch])
        if edit is not None:
            h = edit(h)
        ctx = runner.prepare(ids, mask)
        out, _ = runner.run(h, ctx, layer)
        last = torch.tensor([len(p["input_ids"]) - 1 for p in items])
        logp = torch.log_softmax(runner.logits(out[torch.arange(len(items)), last]).float(), -1)
        ids_out.append(logp.argmax(-1).numpy())
        logp_out.append(logp.numpy())
    return np.concatenate(ids_out), np.concatenate(logp_out)


def rates(hit_N: np.ndarray, sides: np.ndarray, logp_marker_N: np.ndarray, n_resamples: int) -> dict[str, Any]:
    out = {}
    for side in (INSIDE, OUTSIDE):
        sel = sides == side
        out[side] = {"rate": bootstrap_mean(hit_N[sel].astype(float), n_resamples).to_dict(),
                     "mean_logp_marker": float(logp_marker_N[sel].mean())}
    return out


def _standard_lora_runner(cfg: SaeLoraConfig):
    from peft import PeftModel

    from rank1.decoder import LayerRunner
    from rank1.models import load_model

    folder = cfg.folder() / K.STANDARD_LORA_DIR
    if not (folder / K.CONFIG_JSON).is_file():
        return None, None
    meta = read_json(folder / K.CONFIG_JSON)
    if min(meta["layers"]) < cfg.layer:
        raise SaeLoraError(f"the standard LoRA in {folder} adapts layers {meta['layers']}, below the hook layer "
                           f"{cfg.layer}; retrain it with 5.3")
    model = PeftModel.from_pretrained(load_model(cfg.model), folder / K.ADAPTER_DIR).eval()
    return LayerRunner(model), meta


@torch.no_grad()
def latent_examples(sae, store_dir: Path, latents: list[int], tokenizer, k: int, context: int) -> dict[int, Any]:
    """Per latent: firing density over the store and its ``k`` top-activating tokens with +-``context`` tokens."""
    from rank1.store import Store

    store = Store.open(store_dir)
    sel = torch.tensor(latents, dtype=torch.long)
    vals, toks, docs, fired = [], [], [], torch.zeros(len(latents))
    for sh in store.shards():
        acts = sae.encode(sh.acts_TS.float())[:, sel]
        acts[sh.positions_T == 0] = 0  # the opening token (attention sink), outside the SAE's data
        vals.append(acts)
        fired += (acts > 0).sum(0)
        toks.append(sh.token_ids_T.long())
        docs.append(sh.doc_ids_T.long())
    v, t, d = torch.cat(vals), torch.cat(toks), torch.cat(docs)
    top_v, top_i = v.topk(min(k, len(v)), dim=0)
    out = {}
    for j, lat in enumerate(latents):
        ex = []
        for val, i in zip(top_v[:, j].tolist(), top_i[:, j].tolist(), strict=True):
            if val <= 0:
                break
            lo, hi = max(0, i - context), min(len(t), i + context + 1)
            same = d[lo:hi] == d[i]
            ids = t[lo:hi][same].tolist()
            at = int(same[:i - lo].sum())
            ex.append({"activation": val, "token": tokenizer.decode([int(t[i])]),
                       "context": tokenizer.decode(ids[:at]) + "[[" + tokenizer.decode(ids[at:at + 1]) + "]]"
                       + tokenizer.decode(ids[at + 1:])})
        out[lat] = {"density": float(fired[j] / len(v)), "examples": ex}
    return out


@torch.no_grad()
def latent_density(sae, store_dir: Path) -> np.ndarray:
    """Share of the store's tokens (opening tokens left out) on which each latent fires."""
    from rank1.store import Store

    fired, n = torch.zeros(sae.cfg.d_sae), 0
    for sh in Store.open(store_dir).shards():
        keep = sh.positions_T > 0
        fired += (sae.encode(sh.acts_TS[keep].float()) > 0).sum(0)
        n += int(keep.sum())
    return (fired / max(n, 1)).numpy()


def alive_mass(v_N: np.ndarray, density_N: np.ndarray) -> float:
    """Share of a unit direction's squared norm on latents that fire at least once in the store: the rest sits on
    latents the data never activates (a read weight there gets no gradient from the loss)."""
    return float((v_N[density_N > 0] ** 2).sum() / max((v_N ** 2).sum(), 1e-30))


def mean_metrics(dirs_RF: np.ndarray) -> dict[str, float]:
    """Sparsity metrics of each rank component's direction, averaged over the components."""
    per = [sparsity_metrics(v) for v in dirs_RF]
    return {k: float(np.mean([p[k] for p in per])) for k in per[0]}


def top_latents(v_N: np.ndarray, n: int) -> list[dict[str, Any]]:
    order = np.argsort(-np.abs(v_N))[:n]
    return [{"latent": int(i), "weight": float(v_N[i])} for i in order]


def analysis_inputs(cfg: SaeLoraConfig) -> str:
    """One hash of what 5.4 reads and how: the data, the SAE, every adapter and the standard LoRA (their files),
    and the analysis options."""
    h = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in (
        "marker", "condition", "layer", "rank", "init_std", "seed", "top_latents", "top_examples", "context",
        "n_resamples", "sae")} | {"runs": cfg.runs()}, sort_keys=True).encode())
    folders = [data_folder(cfg), sae_folder(cfg), cfg.folder() / K.STANDARD_LORA_DIR / K.ADAPTER_DIR,
               *(cfg.folder() / K.ADAPTERS_DIR / run_name(p, w) for p, w in cfg.runs())]
    for folder in folders:
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.is_file():
                h.update(path.name.encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def analyze(cfg: SaeLoraConfig) -> Path:
    """5.4: every number into ``sae_lora_results.json``, the figures, config.json (skipped when the results of
    the same inputs exist; --overwrite redoes them)."""
    inputs = analysis_inputs(cfg)
    done = cfg.folder() / K.SAE_LORA_RESULTS
    if done.is_file() and not cfg.overwrite and read_json(done).get("inputs_sha256") == inputs:
        log.info("%s is up to date; skipping (--overwrite redoes it)", done)
        return cfg.folder()
    _, heldout, info = load_dataset(cfg)
    _, tokenizer, runner = load_base(cfg)
    sae, sae_id = load_stage_sae(cfg, runner.config.hidden_size)
    pad = tokenizer.pad_token_id or 0
    marker_id = tokenizer(cfg.marker, add_special_tokens=False)["input_ids"][0]
    prefix_ids = [tokenizer(teacher_forced_prefix(tokenizer, r), add_special_tokens=False)["input_ids"]
                  for r in heldout]
    sides = np.array([r["side"] for r in heldout])
    h_cache = residual_cache(runner, [{"input_ids": p} for p in prefix_ids], cfg.layer, pad, desc="held-out residual")

    def measure(run, edit=None) -> dict[str, Any]:
        ids, logp = next_tokens(run, h_cache, prefix_ids, cfg.layer, pad, edit)
        hit = ids == marker_id
        out = rates(hit, sides, logp[:, marker_id], cfg.n_resamples)
        out["next_token_counts"] = {s: dict(zip(*np.unique([tokenizer.decode([int(i)]) for i in ids[sides == s]],
                                                           return_counts=True), strict=True))
                                    for s in (INSIDE, OUTSIDE)}
        for s in (INSIDE, OUTSIDE):
            out["next_token_counts"][s] = {k: int(v) for k, v in out["next_token_counts"][s].items()}
        return out

    variants: dict[str, Any] = {"base": measure(runner)}
    lora_runner, lora_meta = _standard_lora_runner(cfg)
    if lora_runner is not None:
        variants["standard_lora"] = {**measure(lora_runner), "layers": lora_meta["layers"],
                                     "trainable_params": lora_meta["trainable_params"],
                                     "final_loss": lora_meta["final_loss"]}
    store_dir = cfg.folder() / K.RESID_STORE_DIR
    density = latent_density(sae, store_dir)
    runs: dict[str, Any] = {}
    for penalty_kind, weight in tqdm(cfg.runs(), desc="SAE-LoRA runs", unit="run", dynamic_ncols=True):
        name = run_name(penalty_kind, weight)
        folder = cfg.folder() / K.ADAPTERS_DIR / name
        adapter, acfg = load_adapter(folder)
        adapter.requires_grad_(False)
        log_ = read_json(folder / K.SAE_LORA_LOG)
        edit = lambda h, a=adapter, c=acfg["settings"]: apply_adapter(h, sae, a, c["mode"], c["keep_error"])  # noqa: E731
        init = SaeLora(acfg["d_sae"], cfg.rank, cfg.init_std, cfg.seed).requires_grad_(False)
        with torch.no_grad():
            A_hat, B_hat = (x.numpy() for x in adapter.directions())
            A0, B0 = (x.numpy() for x in init.directions())
        reads, writes, reads0, writes0 = A_hat.T, B_hat, A0.T, B0  # [r, d_sae] each
        runs[name] = {"penalty": penalty_kind, "l1_weight": weight, **measure(runner, edit),
                      "s": adapter.s.tolist(), "norm_A_raw": float(adapter.A.norm()),
                      "norm_B_raw": float(adapter.B.norm()), "norm_A_raw_init": float(init.A.norm()),
                      "norm_B_raw_init": float(init.B.norm()),
                      "final_ce": log_[-1]["ce"], "first_ce": log_[0]["ce"],
                      "sparsity": {"A": mean_metrics(reads), "B": mean_metrics(writes),
                                   "A_init": mean_metrics(reads0), "B_init": mean_metrics(writes0)},
                      "alive_mass": {k: float(np.mean([alive_mass(v, density) for v in m]))
                                     for k, m in (("A", reads), ("B", writes), ("A_init", reads0),
                                                  ("B_init", writes0))},
                      "cos_to_init": {"A": float(np.mean((reads * reads0).sum(1))),
                                      "B": float(np.mean((writes * writes0).sum(1)))},
                      "top_read": top_latents(reads[0], cfg.top_latents),
                      "top_write": top_latents(writes[0], cfg.top_latents)}
    latents = sorted({t["latent"] for r in runs.values() for t in r["top_read"] + r["top_write"]})
    examples = latent_examples(sae, store_dir, latents, tokenizer, cfg.top_examples, cfg.context) \
        if latents else {}
    for r in runs.values():
        for t in r["top_read"] + r["top_write"]:
            t.update(examples[t["latent"]])
    folder = cfg.folder()
    sae_metrics = read_json(sae_folder(cfg) / K.RESID_SAE_METRICS)
    results = {"inputs_sha256": inputs, "measure": MEASURE, "marker": cfg.marker, "marker_token_id": int(marker_id),
               "condition": cfg.condition, "layer": cfg.layer, "dataset": info,
               "sae": {k: sae_metrics.get(k) for k in ("heldout", "splice", "d_sae", "d_model", "architecture",
                                                       "store_tokens", "sae_path")},
               "alive_latents": {"n": int((density > 0).sum()), "d_sae": len(density),
                                 "meaning": "latents firing on at least one store token (opening tokens left out)"},
               "variants": variants, "sae_lora_runs": runs,
               "sparsity_meaning": "of the unit-norm read (A_hat) and write (B_hat) directions over the d_sae latents: "
                                   "hoyer = (sqrt(n) - L1/L2)/(sqrt(n) - 1) (1 one-hot, 0 flat), gini of the "
                                   "magnitudes ((n-1)/n one-hot, 0 flat), top10_share = L1 mass in the 10 largest; "
                                   "alive_mass = share of the squared norm on latents that fire in the store; means "
                                   "over the rank components; top_read / top_write: component 0"}
    write_json(folder / K.SAE_LORA_RESULTS, results)
    from rank1.sae_lora.plots import plot_directions, plot_sweep

    plot_sweep(folder / K.SAE_LORA_RESULTS, folder / K.SAE_LORA_SWEEP_STEM)
    plot_directions(folder / K.SAE_LORA_RESULTS, folder / K.ADAPTERS_DIR, folder / K.SAE_LORA_WEIGHTS_STEM)
    write_run_metadata(folder, cfg, {"identity": sae_id, "train_sha256": info["train_sha256"]})
    return folder
