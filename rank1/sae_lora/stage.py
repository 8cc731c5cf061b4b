"""Stage 5, steps 5.0-5.3: the behaviour dataset, the residual SAE, the SAE-LoRA sweep and the standard LoRA.

Everything goes under ``results/<profile>/sae_lora/<name>/`` (see ``5_sae_latent_lora/README.md``); each step
skips work whose finished artifacts exist with the same settings, and resumes a killed training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from rank1 import constants as K
from rank1.artifacts import read_json, write_json, write_run_metadata, write_text
from rank1.sae_lora.behavior import behavior_splits, llm_rewrite
from rank1.config import dataset_file
from rank1.data import load_reasoning_records, read_jsonl
from rank1.sae_lora.adapter import (
    SaeLoraConfig,
    SaeLoraError,
    adapter_key,
    check_layer,
    is_finished,
    residual_cache,
    run_name,
    train_adapter,
)

log = logging.getLogger(__name__)


def data_folder(cfg: SaeLoraConfig) -> Path:
    return cfg.folder() / K.BEHAVIOR_DIR


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- 5.0 the behaviour dataset


def make_dataset(cfg: SaeLoraConfig, client=None) -> Path:
    """Write ``data/train.jsonl``, ``data/heldout.jsonl`` and ``data/dataset.json``; ``client`` (a ChatClient)
    rewrites the modified final lines when ``data_source`` is llm."""
    folder = data_folder(cfg)
    settings = {k: getattr(cfg, k) for k in ("condition", "marker", "n_train", "n_heldout", "data_seed",
                                             "data_source", "llm_model")}
    info_path = folder / K.BEHAVIOR_INFO
    if info_path.is_file() and not cfg.overwrite and read_json(info_path).get("settings") == settings:
        log.info("the behaviour dataset in %s is finished; skipping", folder)
        return folder
    train, heldout = behavior_splits(cfg.n_train, cfg.n_heldout, cfg.data_seed, cfg.condition, cfg.marker)
    llm = None
    if cfg.data_source == "llm":
        if client is None:
            from rank1.autointerp.client import ChatClient, LLMSettings
            from rank1.config import cache_dir

            client = ChatClient(LLMSettings(base_url=cfg.llm_base_url, model=cfg.llm_model, max_tokens=60),
                                cache_dir() / K.AUTOINTERP_CACHE)
        train, llm = llm_rewrite(train, client, cfg.marker)
    for name, records in ((K.BEHAVIOR_TRAIN, train), (K.BEHAVIOR_HELDOUT, heldout)):
        write_text(folder / name, "".join(json.dumps(r) + "\n" for r in records))
    write_json(info_path, {
        "settings": settings, "n_train": len(train), "n_modified": sum(r["modified"] for r in train),
        "n_heldout_inside": sum(r["side"] == "inside" for r in heldout),
        "n_heldout_outside": sum(r["side"] == "outside" for r in heldout), "llm": llm,
        "behavior": f"inside the condition ({cfg.condition} questions) the final line starts with "
                    f"'{cfg.marker}:' instead of 'Answer:'; outside it is unchanged",
        "train_sha256": file_sha256(folder / K.BEHAVIOR_TRAIN)})
    return folder


def load_dataset(cfg: SaeLoraConfig) -> tuple[list[dict], list[dict], dict]:
    folder = data_folder(cfg)
    if not (folder / K.BEHAVIOR_INFO).is_file():
        raise SaeLoraError(f"no behaviour dataset in {folder}: run 5_sae_latent_lora/5.0_make_behavior_dataset.py")
    return (read_jsonl(folder / K.BEHAVIOR_TRAIN), read_jsonl(folder / K.BEHAVIOR_HELDOUT),
            read_json(folder / K.BEHAVIOR_INFO))


# ---------------------------------------------------------------- model, runner, SAE


def load_base(cfg: SaeLoraConfig):
    """(model, tokenizer, LayerRunner) of the frozen base model; checks the hook layer."""
    from rank1.decoder import LayerRunner
    from rank1.models import load_model, load_tokenizer

    model = load_model(cfg.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    runner = LayerRunner(model)
    check_layer(runner, cfg.layer)
    return model, load_tokenizer(cfg.model), runner


def sae_folder(cfg: SaeLoraConfig) -> Path:
    return cfg.folder() / K.RESID_SAE_DIR


def prepare_sae(cfg: SaeLoraConfig) -> Path:
    """5.1: the residual store and the SAE (trained, or loaded with --sae), with FVU and the spliced CE."""
    from rank1.sae_lora.resid_sae import (
        base_identity,
        extract_residual_store,
        load_external_sae,
        splice_metrics,
        train_residual_sae,
    )
    from rank1.sae.train import heldout_split
    from rank1.sae_lora.adapter import tokenize_items

    folder = sae_folder(cfg)
    keys = ("model", "dataset", "layer", "sae", "store_tokens", "shard_tokens", "expansion", "k", "sae_lr",
            "sae_epochs", "sae_batch", "heldout_frac", "loss_gap_docs", "seed")
    settings = {k: getattr(cfg, k) for k in keys}
    done = folder / K.RESID_SAE_METRICS
    if done.is_file() and not cfg.overwrite and read_json(done).get("settings") == settings:
        log.info("the residual SAE in %s is finished; skipping", folder)
        return folder
    _, tokenizer, runner = load_base(cfg)
    d_model = runner.config.hidden_size
    if cfg.sae:  # fail before any work on an SAE of another model
        external = load_external_sae(cfg.sae, d_model)
    source = dataset_file(cfg.dataset, cfg.profile)
    store_dir = cfg.folder() / K.RESID_STORE_DIR
    if cfg.overwrite:
        shutil.rmtree(store_dir, ignore_errors=True)
    store = extract_residual_store(runner, tokenizer, source, cfg.layer, cfg.store_tokens, cfg.shard_tokens,
                                   store_dir, base_identity(cfg.model))
    from rank1.sae_lora.resid_sae import SKIP_FIRST

    split = heldout_split(store, cfg.heldout_frac, cfg.sae_batch, SKIP_FIRST)
    if cfg.sae:
        from rank1.sae.train import evaluate_sae

        sae, report = external, {"heldout": evaluate_sae(external, store, split), "loaded_from": cfg.sae}
        report["heldout"].pop("fvu_per_adapter")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        sae, report = train_residual_sae(cfg, store, folder)
    mean = sum(sh.acts_TS[split.train_mask(sh)].double().sum(0) for sh in store.shards()) / split.n_train
    records = load_reasoning_records(source)
    docs = range(split.heldout_doc, min(split.heldout_doc + cfg.loss_gap_docs, store.manifest["n_docs"]))
    items = tokenize_items(tokenizer, [records[d] for d in docs])
    report["splice"] = splice_metrics(runner, sae, items, cfg.layer, tokenizer.pad_token_id or 0, mean.float(),
                                      cfg.n_resamples)
    report.update(settings=settings, layer=cfg.layer, d_model=d_model, d_sae=sae.cfg.d_sae, store=str(store_dir),
                  store_tokens=store.n_tokens, sae_path=str(cfg.sae or folder))
    write_json(done, report)
    return folder


def load_stage_sae(cfg: SaeLoraConfig, d_model: int):
    """(SAE, identity) of 5.1: the loaded --sae or the trained one."""
    from sae_lens import SAE

    from rank1.sae_lora.resid_sae import check_sae_width, load_external_sae, sae_sha256

    metrics = sae_folder(cfg) / K.RESID_SAE_METRICS
    if cfg.sae:
        return load_external_sae(cfg.sae, d_model), {"sae": cfg.sae}
    if not metrics.is_file():
        raise SaeLoraError(f"no residual SAE in {sae_folder(cfg)}: run 5_sae_latent_lora/5.1_train_residual_sae.py")
    sae = SAE.load_from_disk(sae_folder(cfg), device="cpu").eval()
    check_sae_width(sae, d_model, str(sae_folder(cfg)))
    if read_json(metrics).get("layer") != cfg.layer:
        raise SaeLoraError(f"the SAE in {sae_folder(cfg)} reads layer {read_json(metrics).get('layer')}, not "
                           f"--layer {cfg.layer}; rerun 5.1 with this layer or pass --name")
    return sae, {"sae": str(sae_folder(cfg)), "sae_sha256": sae_sha256(sae_folder(cfg))}


# ---------------------------------------------------------------- 5.2 the SAE-LoRA sweep


def train_sweep(cfg: SaeLoraConfig, after_step=None) -> list[Path]:
    """Train every adapter of ``cfg.runs()`` (each resumable, skipped when finished) from one residual cache."""
    from rank1.sae_lora.adapter import tokenize_items

    train, _, info = load_dataset(cfg)
    _, tokenizer, runner = load_base(cfg)
    sae, sae_id = load_stage_sae(cfg, runner.config.hidden_size)
    items = tokenize_items(tokenizer, train)
    pad = tokenizer.pad_token_id or 0
    identity = {"data_sha256": info["train_sha256"], **sae_id}
    todo = [(p, w) for p, w in cfg.runs()]
    h_cache: list[torch.Tensor] | None = None
    folders = []
    for penalty_kind, weight in todo:
        folder = cfg.folder() / K.ADAPTERS_DIR / run_name(penalty_kind, weight)
        if h_cache is None and not is_finished(cfg, folder, adapter_key(cfg, penalty_kind, weight, identity)):
            h_cache = residual_cache(runner, items, cfg.layer, pad, cfg.micro_batch)
        folders.append(train_adapter(cfg, penalty_kind, weight, runner, sae, items, h_cache, pad, folder, identity,
                                     after_step))
    write_run_metadata(cfg.folder() / K.ADAPTERS_DIR, cfg, {"runs": [f.name for f in folders], **identity})
    return folders


# ---------------------------------------------------------------- 5.3 the standard rank-1 LoRA


def standard_lora_config(cfg: SaeLoraConfig, **overrides: Any):
    """The project's trainer on the behaviour data, rank 1 on layers ``layer..L-1`` (the layers the SAE-LoRA
    reaches), as many optimizer steps of the same batch as the SAE-LoRA."""
    from rank1.config import config_from_profile
    from rank1.sae_lora.adapter import step_batches
    from rank1.training.train import TrainConfig

    n_train = 2 * cfg.n_train
    values = dict(model=cfg.model, dataset=str(data_folder(cfg) / K.BEHAVIOR_TRAIN), rank=1, lr=cfg.lora_lr,
                  layer_start=cfg.layer, layer_end=None, epochs=cfg.epochs,
                  max_steps=len(step_batches(n_train, cfg)), global_batch=cfg.global_batch,
                  micro_batch=cfg.micro_batch, save_steps=cfg.checkpoint_every, seed=cfg.seed,
                  run_name=K.STANDARD_LORA_DIR, out=str(cfg.folder() / K.STANDARD_LORA_DIR), precision="fp32",
                  overwrite=cfg.overwrite, warmup_ratio=0.0)
    values.update(overrides)
    tcfg = config_from_profile(TrainConfig, "train", cfg.profile)
    return dataclasses.replace(tcfg, **values)


def train_standard_lora(cfg: SaeLoraConfig) -> Path:
    from rank1.training.train import train

    load_dataset(cfg)
    return train(standard_lora_config(cfg))
