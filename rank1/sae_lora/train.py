"""Training of one SAE-LoRA adapter (:mod:`rank1.sae_lora.adapter`), resumable after a kill.

Only layers ``l..L-1`` run (:class:`rank1.decoder.LayerRunner`), from the residual entering ``l`` computed once
for the whole dataset (the layers below are frozen and never see the adapter). Gradient accumulation over
micro-batches, a data order that depends only on (seed, epoch), and checkpoints (safetensors + config + optimizer
state, marked complete only once on disk) every few steps: a killed run resumes from the newest complete one and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import newest_checkpoint, read_json, resume_partial, reuse_finished, write_json, write_with
from rank1.batching import pad_items
from rank1.data import IGNORE_INDEX
from rank1.sae_lora.adapter import (
    SaeLora,
    SaeLoraError,
    apply_adapter,
    hoyer,
    penalty,
    stack_cached,
    suffix_ce,
)
from rank1.sae_lora.config import SaeLoraConfig

log = logging.getLogger(__name__)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def step_batches(n: int, cfg: SaeLoraConfig) -> list[list[int]]:
    """The sequences of every optimizer step: epochs of seeded permutations, cut into global batches."""
    total = max(1, round(cfg.epochs * n / cfg.global_batch))
    order: list[int] = []
    epoch = 0
    while len(order) < total * cfg.global_batch:
        order += epoch_order(n, cfg.seed, epoch)
        epoch += 1
    return [order[i * cfg.global_batch:(i + 1) * cfg.global_batch] for i in range(total)]


def save_adapter(adapter: SaeLora, folder: Path, config: dict[str, Any]) -> None:
    """``adapter.safetensors`` (A, B, s) + ``adapter_config.json`` into ``folder``, each atomically."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter.state_dict().items()}
    write_with(folder / K.SAE_LORA_WEIGHTS, lambda t: save_file(tensors, str(t)))
    write_json(folder / K.SAE_LORA_CONFIG, config)


def load_adapter(folder: Path) -> tuple[SaeLora, dict[str, Any]]:
    if not (folder / K.SAE_LORA_WEIGHTS).is_file():
        raise SaeLoraError(f"{folder} holds no SAE-LoRA adapter ({K.SAE_LORA_WEIGHTS} missing); train it with "
                           f"5_sae_latent_lora/5.2_train_sae_lora.py")
    t = load_file(str(folder / K.SAE_LORA_WEIGHTS))
    adapter = SaeLora(t["A"].shape[0], t["A"].shape[1])
    adapter.load_state_dict(t)
    return adapter, read_json(folder / K.SAE_LORA_CONFIG)


def initial_adapter(config: dict[str, Any]) -> SaeLora:
    """The adapter a saved run (its ``adapter_config.json``) started from: its seed, init_std and initialisation
    support, drawn again."""
    st, support = config["settings"], config.get("init_support")
    mask = None
    if support is not None:
        mask = torch.zeros(config["d_sae"], dtype=torch.bool)
        mask[support] = True
    return SaeLora(config["d_sae"], st["rank"], st["init_std"], st["seed"], mask)


def _save_checkpoint(ckpts: Path, step: int, adapter: SaeLora, opt, records: list, config: dict) -> None:
    folder = ckpts / str(step)
    shutil.rmtree(folder, ignore_errors=True)
    save_adapter(adapter, folder, config)
    write_with(folder / "optimizer.pt", lambda t: torch.save(opt.state_dict(), t))
    write_json(folder / "log.json", records)
    (folder / K.CHECKPOINT_DONE).write_text("")
    for p in ckpts.iterdir():
        if p.is_dir() and p != folder:
            shutil.rmtree(p)


def adapter_key(cfg: SaeLoraConfig, penalty_kind: str, l1_weight: float, identity: dict[str, Any]) -> dict:
    """The settings a finished adapter records (JSON round-tripped, so it compares equal to the saved ones)."""
    return json.loads(json.dumps({**cfg.adapter_settings(penalty_kind, l1_weight), **identity}))


def finished_adapter(cfg: SaeLoraConfig, folder: Path, key: dict) -> bool:
    """Whether ``folder`` holds the finished adapter of ``key`` (its config, written last, records the settings);
    one of other settings is refused (:func:`rank1.artifacts.reuse_finished`)."""
    return reuse_finished(folder / K.SAE_LORA_CONFIG, {"settings": key}, cfg.overwrite,
                          "pass --overwrite to retrain it, or another --name") is not None


def accumulate_ce(cfg: SaeLoraConfig, adapter: SaeLora, runner, sae, items: list[dict],
                  h_cache: list[torch.Tensor], pad_id: int, seqs: list[int]) -> tuple[float, int]:
    """Backward of the mean next-token CE of the assistant tokens of ``seqs`` (one optimizer step), in
    micro-batches on the adapter's device; returns (summed CE, token count)."""
    device = adapter.s.device
    n_tok = sum(sum(t != IGNORE_INDEX for t in items[i]["labels"][1:]) for i in seqs)
    ce_total = 0.0
    for m in range(0, len(seqs), cfg.micro_batch):
        group = seqs[m:m + cfg.micro_batch]
        ids, mask, labels = pad_items([items[i] for i in group], pad_id)
        h = apply_adapter(stack_cached([h_cache[i] for i in group], device), sae, adapter, cfg.mode, cfg.keep_error)
        ce = suffix_ce(runner, h, ids, mask, labels, cfg.layer)[0].sum()
        (ce / n_tok).backward()
        ce_total += float(ce.detach())
    return ce_total, n_tok


def train_adapter(cfg: SaeLoraConfig, penalty_kind: str, l1_weight: float, runner, sae, items: list[dict],
                  h_cache: list[torch.Tensor], pad_id: int, folder: Path, identity: dict[str, Any],
                  after_step=None, support_F: torch.Tensor | None = None) -> Path:
    """Train (or resume, or skip when finished) one adapter into ``folder``; ``identity`` (data, SAE) goes into
    its config. The adapter trains in float32 on the SAE's device. With ``cfg.init`` alive, ``support_F`` (bool
    [d_sae], the latents alive on the training tokens) is where A and B start nonzero; its latents go into the
    config. ``after_step(step)`` is called after every optimizer step (tests interrupt runs with it)."""
    key = adapter_key(cfg, penalty_kind, l1_weight, identity)
    if finished_adapter(cfg, folder, key):
        return folder
    ckpts = folder / K.CHECKPOINTS_DIR
    resume_partial(ckpts, key, cfg.overwrite)
    for p in sae.parameters():
        p.requires_grad_(False)
    if (cfg.init == "alive") != (support_F is not None):
        raise SaeLoraError(f"--init {cfg.init} needs {'an' if cfg.init == 'alive' else 'no'} initialisation support")
    adapter = SaeLora(sae.cfg.d_sae, cfg.rank, cfg.init_std, cfg.seed, support_F).to(sae.device)
    opt = torch.optim.Adam([{"params": [adapter.A, adapter.B], "lr": cfg.lr},
                            {"params": [adapter.s], "lr": cfg.lr_s}])
    steps = step_batches(len(items), cfg)
    resume, records, start = newest_checkpoint(ckpts), [], 0
    if resume is not None:
        loaded, _ = load_adapter(resume)
        adapter.load_state_dict(loaded.state_dict())
        opt.load_state_dict(torch.load(resume / "optimizer.pt", map_location="cpu", weights_only=True))
        records, start = read_json(resume / "log.json"), int(resume.name)
        log.info("resuming %s from step %d of %d", folder.name, start, len(steps))
    config = {"settings": key, "d_sae": sae.cfg.d_sae, "steps": len(steps),
              "init_support": None if support_F is None else support_F.nonzero()[:, 0].tolist()}
    bar = tqdm(range(start, len(steps)), desc=f"train {folder.name}", unit="step", dynamic_ncols=True)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        ce_total, n_tok = accumulate_ce(cfg, adapter, runner, sae, items, h_cache, pad_id, steps[step])
        pen = penalty(adapter, penalty_kind)
        (l1_weight * pen).backward()
        opt.step()
        with torch.no_grad():
            A_hat, B_hat = adapter.directions()
            records.append({"step": step + 1, "ce": ce_total / n_tok, "penalty": float(pen.detach()),
                            "norm_A": float(adapter.A.norm()), "norm_B": float(adapter.B.norm()),
                            "s": adapter.s.tolist(), "hoyer_A": hoyer(A_hat[:, 0].cpu().numpy()),
                            "hoyer_B": hoyer(B_hat[0].cpu().numpy())})
        bar.set_postfix(ce=f"{records[-1]['ce']:.3f}", s=f"{adapter.s[0].item():.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == len(steps):
            _save_checkpoint(ckpts, step + 1, adapter, opt, records, config)
        if after_step is not None:
            after_step(step + 1)
    write_json(folder / K.SAE_LORA_LOG, records)
    save_adapter(adapter, folder, config)  # the config last: a folder with it is finished
    shutil.rmtree(ckpts, ignore_errors=True)
    return folder
