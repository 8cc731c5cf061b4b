"""A residual-stream SAE for stage 5: the store of the residual entering one layer, an SAE trained on it with
stage 3's SAELens path (:mod:`rank1.sae.train`), or one that SAELens loads, and what it costs when spliced in.

- :func:`extract_residual_store`: the residual stream entering ``layer`` (one site per model dimension) of the
  first documents of a corpus, through the frozen layers below it (:func:`rank1.sae_lora.adapter.residual_cache`), as an
  activation store of :mod:`rank1.store` (kind ``resid``), written shard by shard (one shard in memory);
- :func:`train_residual_sae`: :func:`rank1.sae.train.train_sae` on that store (held-out split, scalar normalisation
  folded into the saved SAE, resumable), saved as a SAELens inference SAE; its data stream
  (:func:`rank1.sae.split.iter_batches`) reads whole shards into a shuffle buffer of about ``sae_buffer_tokens``
  tokens at a time, so its memory does not grow with the store;
- :func:`load_external_sae`: a SAELens folder, or ``release:sae_id`` where the hub is reachable, checked against
  the model's width;
- :func:`splice_metrics`: next-token cross-entropy of the assistant tokens of held-out documents with the
  residual entering ``layer`` replaced by the SAE reconstruction, by zero, or by its training mean, against clean;
  recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean) with a paired bootstrap CI over documents. The
  first token of every document (the chat template's opening token, an attention sink the SAE does not train
  on) keeps its own residual in every variant.

The SAE lives on the model's device in float32; latents are computed :data:`ENCODE_TOKENS` tokens at a time
(:func:`encoded_chunks`), which bounds the [tokens, d_sae] latents whatever the shard or batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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
ENCODE_TOKENS = 1 << 14  # tokens encoded at once: 16384 x d_sae float32 latents (5 GiB at d_sae = 81920)


def base_identity(model_id: str) -> dict[str, Any]:
    """The identity a store of the base model records (no trained weights: the model id stands for them)."""
    return {"run": "base", "kind": "base", "base_model": model_id, "weights": model_id,
            "weights_sha256": "base-model:" + model_id}


def residual_shard(runner, docs: list[np.ndarray], start: int, layer: int, pad_id: int) -> dict[str, torch.Tensor]:
    """One store shard: the residual entering ``layer`` of ``docs`` (documents ``start``, ``start + 1``, ...)."""
    h = residual_cache(runner, [{"input_ids": d.tolist()} for d in docs], layer, pad_id,
                       desc=f"residual L{layer} docs {start}-{start + len(docs)}")
    return {"acts_TS": torch.cat(h), "token_ids_T": torch.from_numpy(np.concatenate(docs)),
            "doc_ids_T": torch.from_numpy(np.repeat(np.arange(start, start + len(docs), dtype=np.int32),
                                                    [len(d) for d in docs])),
            "positions_T": torch.from_numpy(np.concatenate([np.arange(len(d), dtype=np.int32) for d in docs]))}


def extract_residual_store(runner, tokenizer, source: str, layer: int, max_tokens: int, shard_tokens: int,
                           folder: Path, identity: dict[str, Any]) -> Store:
    """The residual entering ``layer`` of the first ``max_tokens`` tokens of ``source``, as a store in ``folder``;
    each shard is written before the next one is computed."""
    corpus = load_corpus(tokenizer, source, max_tokens=max_tokens)
    pad = tokenizer.pad_token_id or 0
    sites = [{"layer": layer, "name": f"d{i}"} for i in range(runner.config.hidden_size)]
    shards = (residual_shard(runner, corpus.docs[start:end], start, layer, pad)
              for start, end in plan_shards([len(d) for d in corpus.docs], shard_tokens))
    return write_store(folder, shards, sites, identity, kind="resid", dtype="float32")


@torch.no_grad()
def encoded_chunks(sae, x_ND: torch.Tensor, chunk: int = ENCODE_TOKENS) -> Iterator[torch.Tensor]:
    """The SAE latents [n, d_sae] of the rows of ``x_ND``, ``chunk`` rows at a time, on the SAE's device."""
    for c in range(0, len(x_ND), chunk):
        yield sae.encode(x_ND[c:c + chunk].to(sae.device, torch.float32))


@torch.no_grad()
def reconstruction(sae, h_BTD: torch.Tensor, chunk: int = ENCODE_TOKENS) -> torch.Tensor:
    """``decode(encode(h))`` of every token of ``h_BTD`` (float32, on the SAE's device), ``chunk`` tokens at once."""
    h_ND = h_BTD.reshape(-1, h_BTD.shape[-1])
    return torch.cat([sae.decode(f) for f in encoded_chunks(sae, h_ND, chunk)]).reshape(h_BTD.shape)


def sae_config(cfg, device: torch.device) -> SaeConfig:
    """Stage 3's SAE options filled from the ``[sae_lora]`` table; the SAE trains on ``device``."""
    return SaeConfig(profile=cfg.profile, expansion=cfg.expansion, k=cfg.k, lr=cfg.sae_lr, warmup_steps=20,
                     batch_size=cfg.sae_batch, dead_tokens=max(cfg.store_tokens // 2, cfg.sae_batch),
                     epochs=cfg.sae_epochs, heldout_frac=cfg.heldout_frac, normalize="scalar",
                     skip_first_tokens=SKIP_FIRST, seed=cfg.seed, buffer_tokens=cfg.sae_buffer_tokens,
                     checkpoint_every=50, device=device.type, loss_gap=False, overwrite=cfg.overwrite)


def train_residual_sae(cfg, store: Store, folder: Path, device: torch.device):
    """Train (or resume) the SAE on ``store`` into ``folder`` on ``device``; returns (inference SAE on ``device``,
    report)."""
    from sae_lens import SAE

    scfg = sae_config(cfg, device)
    split = heldout_split(store, scfg.heldout_frac, scfg.batch_size, scfg.skip_first_tokens)
    trained, report = train_sae(scfg, store, split, folder)
    save_inference_sae(trained, folder)
    sae = SAE.load_from_disk(folder, device=str(device)).eval()
    heldout = evaluate_sae(sae, store, split)
    heldout.pop("fvu_per_adapter")
    heldout["fvu_mean_over_dims"] = heldout.pop("fvu_mean_over_adapters")
    return sae, {"heldout": heldout, "split": split.describe(store), "settings": scfg.settings(),
                 "training": {k: report[k] for k in ("steps", "tokens", "dead_frac_training")},
                 "normalization": report["normalization"], "architecture": trained.cfg.architecture()}


def load_external_sae(spec: str, d_model: int, device: torch.device | str = "cpu"):
    """A SAELens SAE from a folder, or ``release:sae_id``, on ``device``; refuses one whose input width is not the
    model's."""
    from sae_lens import SAE

    if Path(spec).is_dir():
        sae = SAE.load_from_disk(spec, device=str(device))
    elif ":" in spec:
        release, sae_id = spec.split(":", 1)
        sae = SAE.from_pretrained(release, sae_id, device=str(device))
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
    with paired bootstrap CIs over documents (see the module docstring). The model and the SAE may sit on a GPU;
    the cached residuals stay in host memory."""
    if not items:
        raise SaeLoraError("no held-out document to measure the spliced cross-entropy on")
    h_all = residual_cache(runner, items, layer, pad_id, batch, desc="splice: residual cache")
    sums = {v: np.zeros(len(items)) for v in ("clean", "sae", "zero", "mean")}
    n_tok = 0
    for i in range(0, len(items), batch):
        ids, mask, labels = pad_items(items[i:i + batch], pad_id)
        h = stack_cached(h_all[i:i + batch], sae.device)
        variants = {"clean": h, "sae": reconstruction(sae, h), "zero": torch.zeros_like(h),
                    "mean": mean_D.to(h.device).expand_as(h).clone()}
        for name, x in variants.items():
            x[:, :SKIP_FIRST] = h[:, :SKIP_FIRST]
            ce_B, n_B = suffix_ce(runner, x, ids, mask, labels, layer)
            sums[name][i:i + len(ids)] = ce_B.double().cpu().numpy()
            n_tok += int(n_B.sum()) if name == "clean" else 0
    out: dict[str, Any] = {"n_docs": len(items), "n_tokens": n_tok,
                           **{f"ce_{k}": float(v.sum() / n_tok) for k, v in sums.items()}}
    for abl in ("zero", "mean"):
        out[f"recovered_vs_{abl}"] = paired_recovery(sums["sae"], sums[abl], sums["clean"],
                                                     n_resamples=n_resamples).to_dict()
    out["meaning"] = ("cross-entropy of the assistant tokens with the residual entering the layer replaced; "
                      "recovered_vs_X = (CE_X - CE_sae) / (CE_X - CE_clean), 95% CI over documents")
    return out
