"""A residual-stream SAE for stage 5: the store of the residual entering one layer, an SAE trained on it with
stage 3's SAELens path (:mod:`rank1.sae.train`), or one that SAELens loads, and what it costs when spliced in.

- :func:`extract_residual_store`: the residual stream entering ``layer`` (one site per model dimension) of the
  first documents of a corpus, through the frozen layers below it (:func:`rank1.sae_lora.adapter.residual_cache`), as an
  activation store of :mod:`rank1.store` (kind ``resid``);
- :func:`train_residual_sae`: :func:`rank1.sae.train.train_sae` on that store (held-out split, scalar normalisation
  folded into the saved SAE, resumable), saved as a SAELens inference SAE;
- :func:`load_external_sae`: a SAELens folder, or ``release:sae_id`` where the hub is reachable, checked against
  the model's width;
- :func:`splice_metrics`: next-token cross-entropy of the assistant tokens of held-out documents with the
  residual entering ``layer`` replaced by the SAE reconstruction, by zero, or by its training mean, against clean;
  recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean) with a paired bootstrap CI over documents. The
  first token of every document (the chat template's opening token, an attention sink the SAE does not train
  on) keeps its own residual in every variant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rank1.batching import pad_items
from rank1.sae import SaeConfig, evaluate_sae, heldout_split, save_inference_sae, train_sae
from rank1.sae_lora.adapter import SaeLoraError, residual_cache, stack_cached, suffix_ce
from rank1.stats import paired_recovery
from rank1.store import Store, load_corpus, plan_shards, write_store

log = logging.getLogger(__name__)

SKIP_FIRST = 1  # the opening token of every document: kept out of the SAE's data and never replaced


def base_identity(model_id: str) -> dict[str, Any]:
    """The identity a store of the base model records (no trained weights: the model id stands for them)."""
    return {"run": "base", "kind": "base", "base_model": model_id, "weights": model_id,
            "weights_sha256": "base-model:" + model_id}


def extract_residual_store(runner, tokenizer, source: str, layer: int, max_tokens: int, shard_tokens: int,
                           folder: Path, identity: dict[str, Any]) -> Store:
    """The residual entering ``layer`` of the first ``max_tokens`` tokens of ``source``, as a store in ``folder``."""
    corpus = load_corpus(tokenizer, source, max_tokens=max_tokens)
    pad = tokenizer.pad_token_id or 0
    sites = [{"layer": layer, "name": f"d{i}"} for i in range(runner.config.hidden_size)]
    shards = []
    for start, end in plan_shards([len(d) for d in corpus.docs], shard_tokens):
        docs = corpus.docs[start:end]
        h = residual_cache(runner, [{"input_ids": d.tolist()} for d in docs], layer, pad,
                           desc=f"residual L{layer} docs {start}-{end}")
        shards.append({"acts_TS": torch.cat(h), "token_ids_T": torch.from_numpy(np.concatenate(docs)),
                       "doc_ids_T": torch.from_numpy(np.repeat(np.arange(start, end, dtype=np.int32),
                                                               [len(d) for d in docs])),
                       "positions_T": torch.from_numpy(np.concatenate([np.arange(len(d), dtype=np.int32)
                                                                       for d in docs]))})
    return write_store(folder, shards, sites, identity, kind="resid", dtype="float32")


def sae_config(cfg) -> SaeConfig:
    """Stage 3's SAE options filled from the ``[sae_lora]`` table."""
    return SaeConfig(profile=cfg.profile, expansion=cfg.expansion, k=cfg.k, lr=cfg.sae_lr, warmup_steps=20,
                     batch_size=cfg.sae_batch, dead_tokens=max(cfg.store_tokens // 2, cfg.sae_batch),
                     epochs=cfg.sae_epochs, heldout_frac=cfg.heldout_frac, normalize="scalar",
                     skip_first_tokens=SKIP_FIRST, seed=cfg.seed, buffer_tokens=1 << 16, checkpoint_every=50,
                     device="cpu", loss_gap=False, overwrite=cfg.overwrite)


def train_residual_sae(cfg, store: Store, folder: Path):
    """Train (or resume) the SAE on ``store`` into ``folder``; returns (inference SAE, report)."""
    from sae_lens import SAE

    scfg = sae_config(cfg)
    split = heldout_split(store, scfg.heldout_frac, scfg.batch_size, scfg.skip_first_tokens)
    trained, report = train_sae(scfg, store, split, folder)
    save_inference_sae(trained, folder)
    sae = SAE.load_from_disk(folder, device="cpu").eval()
    heldout = evaluate_sae(sae, store, split)
    heldout.pop("fvu_per_adapter")
    heldout["fvu_mean_over_dims"] = heldout.pop("fvu_mean_over_adapters")
    return sae, {"heldout": heldout, "split": split.describe(store), "settings": scfg.settings(),
                 "training": {k: report[k] for k in ("steps", "tokens", "dead_frac_training")},
                 "normalization": report["normalization"], "architecture": trained.cfg.architecture()}


def load_external_sae(spec: str, d_model: int):
    """A SAELens SAE from a folder, or ``release:sae_id``; refuses one whose input width is not the model's."""
    from sae_lens import SAE

    if Path(spec).is_dir():
        sae = SAE.load_from_disk(spec, device="cpu")
    elif ":" in spec:
        release, sae_id = spec.split(":", 1)
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
        sae = sae[0] if isinstance(sae, tuple) else sae
    else:
        raise SaeLoraError(f"--sae {spec!r} is neither a SAELens folder nor release:sae_id")
    check_sae_width(sae, d_model, spec)
    return sae.eval()


def check_sae_width(sae, d_model: int, what: str) -> None:
    if sae.cfg.d_in != d_model:
        raise SaeLoraError(f"the SAE {what} reads vectors of width {sae.cfg.d_in}, the model's residual stream has "
                           f"{d_model}: it belongs to another model; pass the SAE of this model's layer")


@torch.no_grad()
def splice_metrics(runner, sae, items: list[dict], layer: int, pad_id: int, mean_D: torch.Tensor,
                   n_resamples: int = 2000, batch: int = 8) -> dict[str, Any]:
    """CE (nats per assistant token) clean, SAE-spliced, zero- and mean-ablated at ``layer``; recovered shares
    with paired bootstrap CIs over documents (see the module docstring)."""
    if not items:
        raise SaeLoraError("no held-out document to measure the spliced cross-entropy on")
    h_all = residual_cache(runner, items, layer, pad_id, batch, desc="splice: residual cache")
    sums = {v: np.zeros(len(items)) for v in ("clean", "sae", "zero", "mean")}
    n_tok = 0
    for i in range(0, len(items), batch):
        ids, mask, labels = pad_items(items[i:i + batch], pad_id)
        h = stack_cached(h_all[i:i + batch])
        variants = {"clean": h, "sae": sae.decode(sae.encode(h)), "zero": torch.zeros_like(h),
                    "mean": mean_D.expand_as(h).clone()}
        for name, x in variants.items():
            x[:, :SKIP_FIRST] = h[:, :SKIP_FIRST]
            ce_B, n_B = suffix_ce(runner, x, ids, mask, labels, layer)
            sums[name][i:i + len(ids)] = ce_B.double().numpy()
            n_tok += int(n_B.sum()) if name == "clean" else 0
    out: dict[str, Any] = {"n_docs": len(items), "n_tokens": n_tok,
                           **{f"ce_{k}": float(v.sum() / n_tok) for k, v in sums.items()}}
    for abl in ("zero", "mean"):
        out[f"recovered_vs_{abl}"] = paired_recovery(sums["sae"], sums[abl], sums["clean"],
                                                     n_resamples=n_resamples).to_dict()
    out["meaning"] = ("cross-entropy of the assistant tokens with the residual entering the layer replaced; "
                      "recovered_vs_X = (CE_X - CE_sae) / (CE_X - CE_clean), 95% CI over documents")
    return out
