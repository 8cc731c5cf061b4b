"""Stage 3: a BatchTopK SAE on the adapter state (the 7 x layers scalars of a token), trained with SAELens.

SAELens does the SAE: ``BatchTopKTrainingSAE`` (keeps the k x batch largest pre-activations x decoder-row norm
across the batch, aux-k loss on dead latents, a running global threshold), ``MatryoshkaBatchTopKTrainingSAE``,
``SAETrainer`` (Adam, warm-up, dead-latent bookkeeping, checkpoints of its own state), folding the input
normalisation into the weights, and the inference SAE it saves: a JumpReLU SAE whose per-latent threshold is the
learned global one, so each token is encoded on its own (the authors' BatchTopK encoder depended on the batch).
It loads with ``sae_lens.SAE.load_from_disk(folder)`` and takes raw store activations.

This module adds what is specific to the activation store (the split and the data stream are in
:mod:`rank1.sae.split`):

- the input normalisation, computed exactly over the training tokens in one pass and handed to SAELens'
  activation scaler (which folds it into the saved weights): ``none`` (raw, as the authors), ``scalar``
  (one factor so that the mean norm is sqrt(d_in): the same objective as raw, with a learning rate that does
  not depend on the activations' scale), ``per_site`` (each adapter standardised: every adapter weighs the
  same in the loss, whatever its scale);
- resume: SAELens checkpoints (weights, Adam, schedule, dead-latent counters, scaler) every
  ``checkpoint_every`` steps, marked complete only once on disk; a killed run continues from the newest one
  and ends with the same SAE as an uninterrupted run;
- evaluation on the held-out tokens (:func:`evaluate_sae`); the share of the adapter's effect on the
  next-token loss that the reconstruction keeps is :func:`rank1.sae.splice.loss_gap`.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rank1 import constants as K
from rank1.artifacts import newest_checkpoint, read_json, resume_partial, write_json, write_with
from rank1.runs import check_same_identity
from rank1.sae.config import SaeConfig
from rank1.sae.split import SaeError, Split, input_statistics, iter_batches
from rank1.store import Store

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the SAE and its training


def make_training_sae(cfg: SaeConfig, d_in: int, device: torch.device):
    """A fresh SAELens BatchTopK (or Matryoshka BatchTopK) training SAE, initialised with ``cfg.seed``."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    d_sae = cfg.expansion * d_in
    if cfg.k > d_sae:
        raise SaeError(f"k={cfg.k} is larger than the dictionary ({cfg.expansion} x {d_in} = {d_sae} latents); "
                       f"lower --k or raise --expansion")
    normalize = {"none": "none", "scalar": "expected_average_only_in", "per_site": "covariance_whitening"}
    common = dict(d_in=d_in, d_sae=d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_alpha, device=str(device),
                  normalize_activations=normalize[cfg.normalize])
    torch.manual_seed(cfg.seed)
    widths = cfg.matryoshka_widths
    if widths:
        if widths[-1] > d_sae:
            raise SaeError(f"--matryoshka_widths {widths} exceed the dictionary ({d_sae} latents)")
        widths = widths + ([d_sae] if widths[-1] != d_sae else [])
        return MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=widths,
                                                                                   **common))
    return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))


def activation_scaler(cfg: SaeConfig, stats: dict[str, torch.Tensor], d_in: int):
    """SAELens' activation scaler set to our exact statistics (SAELens would estimate them from the stream)."""
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    if cfg.normalize == "scalar":
        return ActivationScaler(scaling_factor=float(math.sqrt(d_in) / stats["mean_norm"]))
    if cfg.normalize == "per_site":
        std = stats["std_S"].clamp(min=1e-6)
        return ActivationScaler(whitening=ActivationWhitening(stats["mean_S"], torch.diag(1 / std), torch.diag(std)))
    return ActivationScaler()


def describe_normalization(cfg: SaeConfig, stats: dict[str, torch.Tensor] | None, d_in: int) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": cfg.normalize, "folded_into_saved_sae": True,
                           "note": "the saved SAE takes raw store activations; normalisation happened in training"}
    if stats is not None and cfg.normalize == "scalar":
        out["factor"] = float(math.sqrt(d_in) / stats["mean_norm"])
    if stats is not None and cfg.normalize == "per_site":
        out["mean"], out["std"] = stats["mean_S"].tolist(), stats["std_S"].tolist()
    return out


def _trainer_class():
    from sae_lens import SAETrainer

    class LoggingTrainer(SAETrainer):
        """SAELens' trainer, recording the losses every ``log_every`` steps (it only logs to wandb)."""

        log_every = 50
        records: list[dict[str, float]]

        def step(self, batch: torch.Tensor):
            out = super().step(batch)
            if self.n_training_steps % self.log_every == 0:
                with torch.no_grad():
                    x = out.sae_in.float()
                    var = (x - x.mean(0)).pow(2).sum(-1).mean()
                    mse = (out.sae_out.float() - x).pow(2).sum(-1).mean()
                    self.records.append({
                        "step": self.n_training_steps, "tokens": self.n_training_samples,
                        **{k: float(v) for k, v in out.losses.items()}, "fvu": float(mse / var),
                        "l0": float((out.feature_acts > 0).float().sum(-1).mean()),
                        "dead_frac": float(self.dead_neurons.float().mean()),
                        "lr": self.optimizer.param_groups[0]["lr"]})
            return out

    return LoggingTrainer


def make_trainer(cfg: SaeConfig, sae, provider: Iterator[torch.Tensor], total: int, checkpoints: Path | None = None,
                 commit=None):
    """SAELens' trainer (recording losses) for ``total`` training tokens from ``provider``; constant learning rate
    after a linear warm-up; dead = no firing for ``cfg.dead_tokens`` tokens."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    tcfg = SAETrainerConfig(total_training_samples=total, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
                            lr_end=cfg.lr, lr_scheduler_name="constant", lr_warm_up_steps=cfg.warmup_steps,
                            device=str(sae.device), dead_feature_window=math.ceil(cfg.dead_tokens / cfg.batch_size),
                            checkpoint_path=str(checkpoints) if checkpoints else None,
                            logger=LoggingConfig(log_to_wandb=False))
    trainer = _trainer_class()(tcfg, sae, provider, save_checkpoint_fn=commit)
    trainer.records = []
    return trainer


def train_sae(cfg: SaeConfig, store: Store, split: Split, folder: Path) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) the SAE on the training tokens; returns (the trained training SAE, with the input
    normalisation folded in, so it takes raw activations; a report: normalisation, log, dead fraction)."""
    d_in = len(store.sites)
    sae = make_training_sae(cfg, d_in, cfg.torch_device())
    B = cfg.batch_size
    total = int(cfg.epochs * split.n_train) // B * B
    if total < B:
        raise SaeError(f"--epochs {cfg.epochs} x {split.n_train} training tokens is less than one batch of {B}")
    ckpts = folder / K.CHECKPOINTS_DIR
    resume_partial(ckpts, {"settings": cfg.settings(), "store_key": store.manifest["store_key"]}, cfg.overwrite)
    resume = newest_checkpoint(ckpts)  # None: start fresh
    for p in ckpts.iterdir():  # unfinished or superseded ones
        if p.is_dir() and p != resume:
            shutil.rmtree(p)
    start = int(resume.name) if resume is not None else 0
    records: list[dict[str, float]] = read_json(resume / K.SAE_TRAIN_LOG_JSON) if resume is not None else []

    def commit(checkpoint_path: Path | None) -> None:  # called by SAELens once its checkpoint files are written
        write_json(checkpoint_path / K.SAE_TRAIN_LOG_JSON, records)
        (checkpoint_path / K.CHECKPOINT_DONE).write_text("")
        for p in ckpts.iterdir():
            if p.is_dir() and p != checkpoint_path:
                shutil.rmtree(p)

    trainer = make_trainer(cfg, sae, iter_batches(store, split, B, cfg.seed, cfg.buffer_tokens, start), total,
                           ckpts, commit)
    trainer.records = records
    if resume is not None:
        log.info("resuming from %s (%d of %d tokens)", resume, start, total)
        sae.load_weights_from_checkpoint(resume)
        trainer.load_trainer_state(resume)
        trainer.n_training_steps = start // B  # SAELens saves the step counter before incrementing it
    else:
        stats = input_statistics(store, split)
        trainer.activation_scaler = activation_scaler(cfg, stats, d_in)
        write_json(ckpts / "normalization.json", describe_normalization(cfg, stats, d_in))
    every = cfg.checkpoint_every * B
    trainer.checkpoint_thresholds = [t - 1 for t in range(every, total, every) if t > start] + [total - 1]
    log.info("training a %s SAE: %d -> %d latents, k=%d, %d steps of %d tokens (%.3g epochs of %d tokens), "
             "normalisation %s, device %s", sae.cfg.architecture(), d_in, sae.cfg.d_sae, cfg.k, total // B, B,
             cfg.epochs, split.n_train, cfg.normalize, sae.device)
    sae = trainer.fit()
    report = {"normalization": read_json(ckpts / "normalization.json"), "log": records,
              "dead_frac_training": float(trainer.dead_neurons.float().mean()),
              "steps": total // B, "tokens": total}
    return sae, report


# ---------------------------------------------------------------- saving, loading, evaluating


def save_inference_sae(sae, folder: Path) -> None:
    """SAELens' inference SAE (cfg.json + sae_weights.safetensors) into ``folder``; each file atomically, cfg.json
    with sorted keys (SAELens writes them in an order that varies between processes)."""
    tmp = folder / ".sae_inference.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    weights, cfg_path = sae.save_inference_model(tmp)
    write_with(folder / weights.name, lambda t: shutil.copyfile(weights, t))
    write_json(folder / cfg_path.name, read_json(cfg_path), sort_keys=True)
    shutil.rmtree(tmp)


def load_sae(folder: str | Path, store: Store | None = None, device: str = "cpu"):
    """(SAELens inference SAE, our config.json) of a finished 3.0 folder. With ``store``: refuses an SAE made
    from another run or whose input width differs from the store's sites."""
    from sae_lens import SAE

    folder = Path(folder)
    if not (folder / K.CONFIG_JSON).is_file():
        raise SaeError(f"{folder} holds no finished SAE ({K.CONFIG_JSON} missing); train one with "
                       f"3_lora_sae/3.0_train_sae.py (a killed run resumes when rerun)")
    meta = read_json(folder / K.CONFIG_JSON)
    sae = SAE.load_from_disk(folder, device=device)
    if store is not None:
        if sae.cfg.d_in != len(store.sites):
            raise SaeError(f"the SAE in {folder} reads {sae.cfg.d_in} adapters, the store {store.folder} has "
                           f"{len(store.sites)}: it was trained on another store; pass the matching --sae or --store")
        check_same_identity(store.identity, meta["identity"], f"SAE {folder}")
        if meta.get("sites") and meta["sites"] != store.sites:
            raise SaeError(f"the SAE in {folder} was trained on another site order than the store {store.folder}")
    sae.eval()
    return sae, meta


@torch.no_grad()
def evaluate_sae(sae, store: Store, split: Split, chunk: int = 8192) -> dict[str, Any]:
    """On the held-out tokens (without the first ``split.skip`` of each document): FVU = sum ||x - x_hat||^2 /
    sum ||x - mean||^2 (raw activations, mean over the held-out tokens), the mean of each adapter's own FVU, L0
    (latents firing per token), and how many latents fire on at least one held-out token (``n_firing``; not the
    alive count, which is a training-window count: :mod:`rank1.sae.alive`). Encoding is per token (the inference
    SAE)."""
    S, L = len(store.sites), sae.cfg.d_sae
    sse_S, s1_S, s2_S = (torch.zeros(S, dtype=torch.float64) for _ in range(3))
    fired_L = torch.zeros(L, dtype=torch.bool)
    n, l0 = 0, 0.0
    for i, count in enumerate(split.heldout_per_shard):
        if count == 0:
            continue
        sh = store.shard(i)
        x_all = sh.acts_TS[split.heldout_mask(sh)]
        for c in range(0, len(x_all), chunk):
            x = x_all[c:c + chunk].float().to(sae.device)
            acts = sae.encode(x)
            x_hat = sae.decode(acts)
            sse_S += (x_hat - x).double().pow(2).sum(0).cpu()
            s1_S += x.double().sum(0).cpu()
            s2_S += x.double().pow(2).sum(0).cpu()
            fired = acts > 0
            fired_L |= fired.any(0).cpu()
            l0 += float(fired.sum())
            n += len(x)
    var_S = s2_S - s1_S ** 2 / n
    per_site = (sse_S / var_S.clamp(min=1e-30)).tolist()
    return {"n_tokens": n, "fvu": float(sse_S.sum() / var_S.sum()), "fvu_mean_over_adapters": float(np.mean(per_site)),
            "fvu_per_adapter": per_site, "l0": l0 / n, "n_firing": int(fired_L.sum()),
            "firing_frac": float(fired_L.float().mean()), "d_sae": L}
