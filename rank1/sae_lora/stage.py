"""Stage 5 (SAE-LoRA): one ``run_<script>`` per script of ``5_sae_latent_lora/``, each returning its folder.

The behaviour dataset (5.0), the residual SAE (5.1), the SAE-LoRA sweep (5.2), the standard LoRA (5.3) and the
analysis (5.4). Everything goes under ``results/<profile>/sae_lora/<name>/`` (see ``5_sae_latent_lora/README.md``);
each step skips work whose finished artifacts exist with the same settings and inputs, refuses those of others
(``--overwrite`` redoes them), and resumes a killed training (:mod:`rank1.artifacts`).

The base model (``--model`` with ``{size}`` filled by ``--model_size``) runs on the GPU when there is one, in the
weight dtype of ``--precision`` (:func:`rank1.runs.device_and_dtype`: bf16 on a GPU with ``auto``, fp32 on a CPU,
where ``bf16`` means autocast); the SAE and the SAE-LoRA adapters sit on the same device in float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import (
    file_sha256,
    read_json,
    reuse_finished,
    settings_digest,
    write_json,
    write_run_metadata,
    write_text,
)
from rank1.autointerp.client import ChatClient, LLMSettings
from rank1.config import cache_dir, config_from_profile, dataset_file
from rank1.data import load_reasoning_records, read_jsonl
from rank1.decoder import LayerRunner
from rank1.models import load_model, load_tokenizer
from rank1.runs import device_and_dtype, use_bf16
from rank1.sae import evaluate_sae, heldout_split
from rank1.sae_lora.adapter import (
    SaeLoraError,
    alive_on,
    apply_adapter,
    check_layer,
    placement,
    residual_cache,
    tokenize_items,
)
from rank1.sae_lora.behavior import behavior_splits, llm_rewrite
from rank1.sae_lora.config import SaeLoraConfig, seeded_run_name
from rank1.sae_lora.eval import (
    MEASURE,
    SPREAD_RULE,
    HeldOut,
    direction_metrics,
    held_out_prompts,
    latent_density,
    latent_examples,
    measure,
    seed_comparison,
)
from rank1.sae_lora.plots import plot_directions, plot_sweep
from rank1.sae_lora.resid_sae import (
    SKIP_FIRST,
    base_identity,
    check_sae_width,
    extract_residual_store,
    load_external_sae,
    splice_metrics,
    train_residual_sae,
)
from rank1.sae_lora.train import (
    adapter_key,
    finished_adapter,
    initial_adapter,
    load_adapter,
    step_batches,
    train_adapter,
)
from rank1.store import Store
from rank1.training import TrainConfig, train

log = logging.getLogger(__name__)


def data_folder(cfg: SaeLoraConfig) -> Path:
    return cfg.folder() / K.BEHAVIOR_DIR


# ---------------------------------------------------------------- 5.0 the behaviour dataset


def run_make_behavior_dataset(cfg: SaeLoraConfig, client=None) -> Path:
    """5.0: write ``data/train.jsonl``, ``data/heldout.jsonl`` and ``data/dataset.json``; ``client`` (a ChatClient)
    rewrites the modified final lines when ``data_source`` is llm."""
    folder = data_folder(cfg)
    settings = {k: getattr(cfg, k) for k in ("condition", "marker", "n_train", "n_heldout", "data_seed",
                                             "data_source", "llm_model")}
    info_path = folder / K.BEHAVIOR_INFO
    if reuse_finished(info_path, {"settings": settings}, cfg.overwrite) is not None:
        return folder
    train, heldout = behavior_splits(cfg.n_train, cfg.n_heldout, cfg.data_seed, cfg.condition, cfg.marker)
    llm = None
    if cfg.data_source == "llm":
        if client is None:

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


@dataclass
class Base:
    """The frozen base model on its device: the model, its tokenizer and layer runner, and the bf16 autocast a CPU
    computes under when ``--precision bf16`` asks for it (a GPU holds bf16 weights instead)."""

    model: torch.nn.Module
    tokenizer: Any
    runner: LayerRunner
    device: torch.device
    autocast_bf16: bool

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": str(placement(self.runner)[1]).removeprefix("torch."),
                "autocast_bf16": self.autocast_bf16}


def load_frozen(model_id: str, precision: str) -> torch.nn.Module:
    """``model_id`` in the weight dtype of ``precision``, frozen, on the GPU when there is one (the weights load
    straight onto it), else on the CPU."""
    device, dtype, _ = device_and_dtype(precision)
    model = load_model(model_id, dtype=dtype, **({"device_map": {"": str(device)}} if device.type == "cuda" else {}))
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_base(cfg: SaeLoraConfig) -> Base:
    """The frozen base model of ``cfg`` on its device; checks the hook layer."""
    device, dtype, autocast = device_and_dtype(cfg.precision)
    model = load_frozen(cfg.model_id, cfg.precision)
    runner = LayerRunner(model)
    check_layer(runner, cfg.layer)
    log.info("base model %s on %s (%s%s)", cfg.model_id, device, dtype, ", bf16 autocast" if autocast else "")
    return Base(model, load_tokenizer(cfg.model_id), runner, device, autocast)


def sae_folder(cfg: SaeLoraConfig) -> Path:
    return cfg.folder() / K.RESID_SAE_DIR


def run_train_residual_sae(cfg: SaeLoraConfig) -> Path:
    """5.1: the residual store and the SAE (trained, or loaded with --sae), with FVU and the spliced CE."""

    folder = sae_folder(cfg)
    keys = ("model", "dataset", "layer", "sae", "store_tokens", "shard_tokens", "expansion", "k", "sae_lr",
            "sae_epochs", "sae_batch", "sae_buffer_tokens", "heldout_frac", "loss_gap_docs", "seed")
    settings = {k: getattr(cfg, k) for k in keys} | {"model": cfg.model_id}
    done = folder / K.RESID_SAE_METRICS
    if reuse_finished(done, {"settings": settings}, cfg.overwrite) is not None:
        return folder
    base = load_base(cfg)
    tokenizer, runner = base.tokenizer, base.runner
    d_model = runner.config.hidden_size
    if cfg.sae:  # fail before any work on an SAE of another model
        external = load_external_sae(cfg.sae, d_model, base.device)
    source = dataset_file(cfg.dataset, cfg.profile)
    store_dir = cfg.folder() / K.RESID_STORE_DIR
    if cfg.overwrite:
        shutil.rmtree(store_dir, ignore_errors=True)
    with base.autocast():
        store = extract_residual_store(runner, tokenizer, source, cfg.layer, cfg.store_tokens, cfg.shard_tokens,
                                       store_dir, base_identity(cfg.model_id))
    split = heldout_split(store, cfg.heldout_frac, cfg.sae_batch, SKIP_FIRST)
    if cfg.sae:
        sae, report = external, {"heldout": evaluate_sae(external, store, split), "loaded_from": cfg.sae}
        report["heldout"].pop("fvu_per_adapter")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        sae, report = train_residual_sae(cfg, store, folder, base.device)
    mean = sum(sh.acts_TS[split.train_mask(sh)].double().sum(0) for sh in store.shards()) / split.n_train
    records = load_reasoning_records(source)
    docs = range(split.heldout_doc, min(split.heldout_doc + cfg.loss_gap_docs, store.manifest["n_docs"]))
    items = tokenize_items(tokenizer, [records[d] for d in docs])
    with base.autocast():
        report["splice"] = splice_metrics(runner, sae, items, cfg.layer, tokenizer.pad_token_id or 0, mean.float(),
                                          cfg.n_resamples)
    report.update(settings=settings, layer=cfg.layer, d_model=d_model, d_sae=sae.cfg.d_sae, store=str(store_dir),
                  store_tokens=store.n_tokens, sae_path=str(cfg.sae or folder), compute=base.describe())
    write_json(done, report)
    return folder


def load_stage_sae(cfg: SaeLoraConfig, d_model: int, device: torch.device):
    """(SAE on ``device``, identity) of 5.1: the loaded --sae or the trained one."""
    from sae_lens import SAE


    metrics = sae_folder(cfg) / K.RESID_SAE_METRICS
    if cfg.sae:
        return load_external_sae(cfg.sae, d_model, device), {"sae": cfg.sae}
    if not metrics.is_file():
        raise SaeLoraError(f"no residual SAE in {sae_folder(cfg)}: run 5_sae_latent_lora/5.1_train_residual_sae.py")
    sae = SAE.load_from_disk(sae_folder(cfg), device=str(device)).eval()
    check_sae_width(sae, d_model, str(sae_folder(cfg)))
    if read_json(metrics).get("layer") != cfg.layer:
        raise SaeLoraError(f"the SAE in {sae_folder(cfg)} reads layer {read_json(metrics).get('layer')}, not "
                           f"--layer {cfg.layer}; rerun 5.1 with this layer or pass --name")
    return sae, {"sae": str(sae_folder(cfg)), "sae_sha256": file_sha256(*sorted(sae_folder(cfg).glob("*.safetensors")))}


# ---------------------------------------------------------------- 5.2 the SAE-LoRA sweep


def run_train_sae_lora(cfg: SaeLoraConfig, after_step=None) -> Path:
    """5.2: train every adapter of ``cfg.seeded_runs()`` (each resumable, skipped when finished) from one residual
    cache; returns ``adapters/``, whose ``config.json`` lists the runs."""
    train, _, info = load_dataset(cfg)
    base = load_base(cfg)
    tokenizer, runner = base.tokenizer, base.runner
    sae, sae_id = load_stage_sae(cfg, runner.config.hidden_size, base.device)
    items = tokenize_items(tokenizer, train)
    pad = tokenizer.pad_token_id or 0
    # the tokenized sequences too: a change in how records become text (not only in the file) refuses stale runs
    identity = {"data_sha256": info["train_sha256"], "tokens_sha256": settings_digest(items), **sae_id}
    h_cache: list[torch.Tensor] | None = None
    support: torch.Tensor | None = None
    folders = []
    for penalty_kind, weight, seed in cfg.seeded_runs():
        rcfg = dataclasses.replace(cfg, seed=seed)
        folder = cfg.folder() / K.ADAPTERS_DIR / seeded_run_name(penalty_kind, weight, seed)
        if not finished_adapter(rcfg, folder, adapter_key(rcfg, penalty_kind, weight, identity)):
            with base.autocast():
                if h_cache is None:
                    h_cache = residual_cache(runner, items, cfg.layer, pad, cfg.micro_batch)
                if cfg.init == "alive" and support is None:
                    support = alive_on(sae, h_cache, SKIP_FIRST)
                    log.info("alive-only initialisation: %d of %d latents alive on the training tokens",
                             int(support.sum()), len(support))
                train_adapter(rcfg, penalty_kind, weight, runner, sae, items, h_cache, pad, folder, identity,
                              after_step, support)
        folders.append(folder)
    write_run_metadata(cfg.folder() / K.ADAPTERS_DIR, cfg, {"runs": [f.name for f in folders], **identity})
    return cfg.folder() / K.ADAPTERS_DIR


# ---------------------------------------------------------------- 5.3 the standard rank-1 LoRA


def standard_lora_config(cfg: SaeLoraConfig, **overrides: Any):
    """The project's trainer on the behaviour data, rank 1 on layers ``layer..L-1`` (the layers the SAE-LoRA
    reaches), as many optimizer steps of the same batch as the SAE-LoRA, in the precision ``--precision`` resolves
    to on this machine (bf16 or fp32)."""

    n_train = 2 * cfg.n_train
    values = dict(model=cfg.model_id, model_size=None, dataset=str(data_folder(cfg) / K.BEHAVIOR_TRAIN), rank=1,
                  lr=cfg.lora_lr, layer_start=cfg.layer, layer_end=None, epochs=cfg.epochs,
                  max_steps=len(step_batches(n_train, cfg)), global_batch=cfg.global_batch,
                  micro_batch=cfg.micro_batch, save_steps=cfg.checkpoint_every, seed=cfg.seed,
                  run_name=K.STANDARD_LORA_DIR, out=str(cfg.folder() / K.STANDARD_LORA_DIR),
                  precision="bf16" if use_bf16(cfg.precision) else "fp32", overwrite=cfg.overwrite, warmup_ratio=0.0)
    values.update(overrides)
    tcfg = config_from_profile(TrainConfig, "train", cfg.profile)
    return dataclasses.replace(tcfg, **values)


def run_train_standard_lora(cfg: SaeLoraConfig) -> Path:
    """5.3: the standard LoRA baseline into ``standard_lora/`` (resumes after a kill; skips when finished)."""

    load_dataset(cfg)
    return train(standard_lora_config(cfg))


# ---------------------------------------------------------------- 5.4 the analysis


def analysis_inputs(cfg: SaeLoraConfig) -> str:
    """One hash of what 5.4 reads and how: the data, the SAE, every adapter and the standard LoRA (their files),
    and the analysis options."""
    h = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in (
        "marker", "condition", "layer", "rank", "init_std", "init", "seed", "seeds", "top_latents", "top_examples",
        "context", "n_resamples", "sae")} | {"runs": cfg.seeded_runs()}, sort_keys=True).encode())
    folders = [data_folder(cfg), sae_folder(cfg), cfg.folder() / K.STANDARD_LORA_DIR / K.ADAPTER_DIR,
               *(cfg.folder() / K.ADAPTERS_DIR / seeded_run_name(p, w, s) for p, w, s in cfg.seeded_runs())]
    for folder in folders:
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.is_file():
                h.update(path.name.encode())
                h.update(path.read_bytes())
    return h.hexdigest()


@contextmanager
def standard_lora(cfg: SaeLoraConfig, base: Base):
    """Put 5.3's standard LoRA on the base model in place (``base.runner`` then runs it; one copy of the weights in
    memory) and yield its config.json; the adapter is removed on exit, whatever happens. Yields None when 5.3 has
    not run."""
    from peft import PeftModel

    folder = cfg.folder() / K.STANDARD_LORA_DIR
    if not (folder / K.CONFIG_JSON).is_file():
        yield None
        return
    meta = read_json(folder / K.CONFIG_JSON)
    if min(meta["layers"]) < cfg.layer:
        raise SaeLoraError(f"the standard LoRA in {folder} adapts layers {meta['layers']}, below the hook layer "
                           f"{cfg.layer}; retrain it with 5.3")
    model = PeftModel.from_pretrained(base.model, folder / K.ADAPTER_DIR).eval()
    try:
        yield meta
    finally:
        model.unload()


def _variants(cfg: SaeLoraConfig, base: Base, held: HeldOut) -> dict[str, Any]:
    """The behaviour of the base model and of the standard LoRA (when 5.3 has run)."""
    variants: dict[str, Any] = {"base": measure(base.runner, held, base.tokenizer, cfg.n_resamples)}
    with standard_lora(cfg, base) as meta:
        if meta is not None:
            variants["standard_lora"] = {**measure(base.runner, held, base.tokenizer, cfg.n_resamples),
                                         "layers": meta["layers"], "trainable_params": meta["trainable_params"],
                                         "final_loss": meta["final_loss"]}
    return variants


def _sae_lora_runs(cfg: SaeLoraConfig, runner, sae, held: HeldOut, tokenizer, density: np.ndarray) -> dict[str, Any]:
    """Behaviour and directions of every adapter of 5.2."""
    runs: dict[str, Any] = {}
    for penalty_kind, weight, seed in tqdm(cfg.seeded_runs(), desc="SAE-LoRA runs", unit="run", dynamic_ncols=True):
        name = seeded_run_name(penalty_kind, weight, seed)
        folder = cfg.folder() / K.ADAPTERS_DIR / name
        adapter, acfg = load_adapter(folder)
        adapter.requires_grad_(False).to(sae.device)
        log_ = read_json(folder / K.SAE_LORA_LOG)
        edit = lambda h, a=adapter, c=acfg["settings"]: apply_adapter(h, sae, a, c["mode"], c["keep_error"])  # noqa: E731
        init = initial_adapter(acfg).requires_grad_(False)
        runs[name] = {"penalty": penalty_kind, "l1_weight": weight, "seed": seed,
                      "init": acfg["settings"].get("init", "gaussian"),
                      **measure(runner, held, tokenizer, cfg.n_resamples, edit),
                      **direction_metrics(adapter, init, log_, density, cfg.top_latents)}
    return runs


def _results(cfg: SaeLoraConfig, inputs: str, held: HeldOut, info: dict, density: np.ndarray,
             variants: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    sae_metrics = read_json(sae_folder(cfg) / K.RESID_SAE_METRICS)
    return {"inputs_sha256": inputs, "measure": MEASURE, "marker": cfg.marker, "marker_token_id": int(held.marker_id),
            "condition": cfg.condition, "layer": cfg.layer, "dataset": info,
            "sae": {k: sae_metrics.get(k) for k in ("heldout", "splice", "d_sae", "d_model", "architecture",
                                                    "store_tokens", "sae_path")},
            "alive_latents": {"n": int((density > 0).sum()), "d_sae": len(density),
                              "meaning": "latents firing on at least one store token (opening tokens left out)"},
            "variants": variants, "sae_lora_runs": runs, "comparison": seed_comparison(runs),
            "sparsity_meaning": "of the unit-norm read (A_hat) and write (B_hat) directions over the d_sae latents: "
                                "hoyer = (sqrt(n) - L1/L2)/(sqrt(n) - 1) (1 one-hot, 0 flat), gini of the "
                                "magnitudes ((n-1)/n one-hot, 0 flat), top10_share = L1 mass in the 10 largest; "
                                "alive_mass = share of the squared norm on latents that fire in the store; means "
                                "over the rank components; top_read / top_write: component 0"}


def run_analyze(cfg: SaeLoraConfig) -> Path:
    """5.4: every number into ``sae_lora_results.json``, the figures, config.json (skipped when the results of
    the same inputs exist; --overwrite redoes them)."""
    inputs = analysis_inputs(cfg)
    folder = cfg.folder()
    done = folder / K.SAE_LORA_RESULTS
    if reuse_finished(done, {"inputs_sha256": inputs, "comparison.rule": SPREAD_RULE}, cfg.overwrite) is not None:
        return folder  # (results of another verdict rule are refused, not shown with stale verdicts)
    _, heldout, info = load_dataset(cfg)
    base = load_base(cfg)
    tokenizer, runner = base.tokenizer, base.runner
    sae, sae_id = load_stage_sae(cfg, runner.config.hidden_size, base.device)
    store = Store.open(folder / K.RESID_STORE_DIR)
    with base.autocast():
        held = held_out_prompts(runner, tokenizer, heldout, cfg.marker, cfg.layer)
        variants = _variants(cfg, base, held)
        density = latent_density(sae, store)
        runs = _sae_lora_runs(cfg, runner, sae, held, tokenizer, density)
        latents = sorted({t["latent"] for r in runs.values() for t in r["top_read"] + r["top_write"]})
        examples = latent_examples(sae, store, latents, tokenizer, cfg.top_examples, cfg.context) if latents else {}
    for r in runs.values():
        for t in r["top_read"] + r["top_write"]:
            t.update(examples[t["latent"]])
    write_json(done, _results(cfg, inputs, held, info, density, variants, runs))

    plot_sweep(done, folder / K.SAE_LORA_SWEEP_STEM)
    plot_directions(done, folder / K.ADAPTERS_DIR, folder / K.SAE_LORA_WEIGHTS_STEM)
    write_run_metadata(folder, cfg, {"identity": sae_id, "train_sha256": info["train_sha256"]})
    return folder

