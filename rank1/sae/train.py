"""Stage 3: a BatchTopK SAE on the adapter state (the 7 x layers scalars of a token), trained with SAELens.

SAELens does the SAE: ``BatchTopKTrainingSAE`` (keeps the k x batch largest pre-activations x decoder-row norm
across the batch, aux-k loss on dead latents, a running global threshold), ``MatryoshkaBatchTopKTrainingSAE``,
``SAETrainer`` (Adam, warm-up, dead-latent bookkeeping, checkpoints of its own state), folding the input
normalisation into the weights, and the inference SAE it saves: a JumpReLU SAE whose per-latent threshold is the
learned global one, so each token is encoded on its own (the authors' BatchTopK encoder depended on the batch).
It loads with ``sae_lens.SAE.load_from_disk(folder)`` and takes raw store activations.

This module adds what is specific to the activation store:

- the split (:func:`heldout_split`): the last documents of the store (at least ``heldout_frac`` of its tokens,
  whole documents) are held out; everything before them trains;
- the data (:func:`iter_batches`): an endless stream of fixed-size float32 batches of training tokens, in
  bounded memory. Each epoch visits the shards in a seeded random order, groups them into buffers of about
  ``buffer_tokens`` tokens and permutes each buffer with a seed of (seed, epoch, buffer); batches run across
  buffer and epoch boundaries. The stream depends only on its position, so a resumed run skips to the sample
  it stopped at without reading what came before (SAELens' own mixing buffer draws from the global RNG and
  cannot resume, hence this);
- the input normalisation, computed exactly over the training tokens in one pass and handed to SAELens'
  activation scaler (which folds it into the saved weights): ``none`` (raw, as the authors), ``scalar``
  (one factor so that the mean norm is sqrt(d_in): the same objective as raw, with a learning rate that does
  not depend on the activations' scale), ``per_site`` (each adapter standardised: every adapter weighs the
  same in the loss, whatever its scale);
- resume: SAELens checkpoints (weights, Adam, schedule, dead-latent counters, scaler) every
  ``checkpoint_every`` steps, marked complete only once on disk; a killed run continues from the newest one
  and ends with the same SAE as an uninterrupted run;
- evaluation on the held-out tokens (:func:`evaluate_sae`) and the share of the adapter's effect on the
  next-token loss that the reconstruction keeps (:func:`loss_gap`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rank1 import constants as K
from rank1.artifacts import newest_checkpoint, read_json, write_json, write_run_metadata, write_with
from rank1.config import option, results_dir
from rank1.runs import RunOptions, check_same_identity
from rank1.store import Store

log = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "scalar", "per_site")
SPLIT_RULE = "held out: the last documents of the store, at least heldout_frac of its tokens (whole documents)"


class SaeError(ValueError):
    """An SAE or its inputs cannot be used as asked (the message says why and what to do)."""


@dataclass
class SaeConfig(RunOptions):
    """Options of 3.0 (profile table ``[sae]``)."""

    store: str | None = option("activation store of 2.0 (default: results/<profile>/lora_activations/<run>)")
    expansion: int = option("dictionary size = expansion x adapters", 8)
    k: int = option("latents kept per token on average (BatchTopK over the batch)", 16)
    matryoshka_widths: str = option("comma list of nested dictionary widths for a Matryoshka BatchTopK SAE "
                                    "(empty: plain BatchTopK)", "")
    lr: float = option("Adam learning rate (constant after the warm-up)", 5e-4)
    warmup_steps: int = option("linear learning-rate warm-up, in steps", 100)
    batch_size: int = option("tokens per step", 512)
    aux_alpha: float = option("coefficient of the aux-k loss that revives dead latents", 1 / 32)
    dead_tokens: int = option("a latent is dead after this many training tokens without firing", 1_000_000)
    epochs: float = option("passes over the training tokens (may be fractional)", 1.0)
    heldout_frac: float = option("share of the store's tokens held out for evaluation (last documents)", 0.01)
    normalize: str = option(f"input normalisation, one of {NORMALIZATIONS} (folded into the saved SAE)", "scalar")
    skip_first_tokens: int = option("leave out the first n tokens of every document (1: the chat template's "
                                    "opening token, the same adapter state in every document at about 12x the "
                                    "usual norm in the tiny model, an attention sink)", 1)
    seed: int = option("seed of the initialisation and of the data order", 42)
    buffer_tokens: int = option("tokens shuffled together (memory bound of the data stream)", 1 << 20)
    checkpoint_every: int = option("steps between checkpoints (what a killed run resumes from)", 500)
    device: str = option("device of the SAE: auto | cpu | cuda", "auto")
    loss_gap: bool = option("measure the share of the adapter's next-token loss effect the SAE keeps", True)
    loss_gap_tokens: int = option("held-out tokens (whole documents) for the loss-gap share", 4096)
    batch_tokens: int = option("padded tokens per model forward pass of the loss-gap measurement", 4096)
    precision: str = option("model precision for the loss gap: auto | bf16 | fp32", "auto")
    out: str | None = option("output folder (default: results/<profile>/sae/<run>)")
    overwrite: bool = option("retrain even if a finished SAE (or checkpoints of other settings) exists", False)

    def __post_init__(self):
        if min(self.expansion, self.k, self.batch_size, self.buffer_tokens, self.checkpoint_every) < 1:
            raise ValueError("need --expansion, --k, --batch_size, --buffer_tokens, --checkpoint_every >= 1")
        if min(self.warmup_steps, self.skip_first_tokens) < 0 or min(self.dead_tokens, self.loss_gap_tokens,
                                                                      self.batch_tokens) < 1:
            raise ValueError("need --warmup_steps, --skip_first_tokens >= 0 and --dead_tokens, --loss_gap_tokens, "
                             "--batch_tokens >= 1")
        if not 0 < self.heldout_frac < 1:
            raise ValueError(f"--heldout_frac must be in (0, 1): the metrics need held-out tokens, got "
                             f"{self.heldout_frac}")
        if not (self.lr > 0 and self.aux_alpha >= 0 and self.epochs > 0):
            raise ValueError("need --lr > 0, --aux_alpha >= 0 and --epochs > 0")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"--normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        self.widths()

    def widths(self) -> list[int]:
        try:
            widths = [int(w) for w in self.matryoshka_widths.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"--matryoshka_widths must be a comma list of integers, got "
                             f"{self.matryoshka_widths!r}") from None
        if any(w < 1 for w in widths) or any(a >= b for a, b in zip(widths, widths[1:], strict=False)):
            raise ValueError(f"--matryoshka_widths must be positive and strictly increasing, got {widths}")
        return widths

    def settings(self) -> dict[str, Any]:
        """What determines the trained SAE (with the store): two runs with equal settings train the same one."""
        names = ("expansion", "k", "matryoshka_widths", "lr", "warmup_steps", "batch_size", "aux_alpha",
                 "dead_tokens", "epochs", "heldout_frac", "normalize", "skip_first_tokens", "seed", "buffer_tokens")
        return {n: getattr(self, n) for n in names}

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# ---------------------------------------------------------------- split and data stream


@dataclass(frozen=True)
class Split:
    """Training tokens: documents before ``heldout_doc``; held-out tokens: that document and every later one;
    on both sides without the first ``skip`` tokens of each document."""

    heldout_doc: int
    skip: int
    train_per_shard: tuple[int, ...]  # training tokens in each shard
    heldout_per_shard: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return sum(self.train_per_shard)

    @property
    def n_heldout(self) -> int:
        return sum(self.heldout_per_shard)

    def train_mask(self, sh) -> torch.Tensor:
        return (sh.doc_ids_T < self.heldout_doc) & (sh.positions_T >= self.skip)

    def heldout_mask(self, sh) -> torch.Tensor:
        return (sh.doc_ids_T >= self.heldout_doc) & (sh.positions_T >= self.skip)

    def describe(self, store: Store) -> dict[str, Any]:
        return {"rule": SPLIT_RULE, "skip_first_tokens": self.skip, "heldout_doc_start": self.heldout_doc,
                "heldout_docs": store.manifest["n_docs"] - self.heldout_doc, "n_heldout_tokens": self.n_heldout,
                "n_train_tokens": self.n_train}


def heldout_split(store: Store, heldout_frac: float, batch_size: int = 1, skip: int = 0) -> Split:
    """Hold out the last documents, at least ``heldout_frac`` of the (counted) tokens; raise if either side is
    empty. Tokens at positions below ``skip`` count on neither side."""
    if not 0 < heldout_frac < 1:
        raise SaeError(f"heldout_frac must be in (0, 1) (the held-out slice cannot be empty), got {heldout_frac}")
    n_shards = len(store.manifest["shards"])
    kept = [store.tensor(i, "doc_ids_T")[store.tensor(i, "positions_T") >= skip] for i in range(n_shards)]
    lengths = torch.bincount(torch.cat(kept).long(), minlength=store.manifest["n_docs"]).tolist() if kept else []
    target, total, start = math.ceil(heldout_frac * sum(lengths)), 0, len(lengths)
    while start > 0 and total < target:
        start -= 1
        total += lengths[start]
    if total == 0:
        raise SaeError(f"the held-out slice of {store.folder} is empty (no document has tokens beyond the first "
                       f"{skip}); extract a store with 2.0 first")
    split = Split(start, skip, tuple(int((d < start).sum()) for d in kept),
                  tuple(int((d >= start).sum()) for d in kept))
    if split.n_train < batch_size:
        raise SaeError(f"holding out {heldout_frac:.3g} of {store.n_tokens} tokens ({len(lengths) - start} of "
                       f"{len(lengths)} documents) leaves {split.n_train} training tokens, fewer than one batch of "
                       f"{batch_size}; lower --heldout_frac or extract more tokens")
    return split


def _epoch_buffers(split: Split, seed: int, epoch: int, buffer_tokens: int) -> list[list[int]]:
    """The shards of each buffer of one epoch: a seeded random shard order, cut every ``buffer_tokens``."""
    order = np.random.default_rng([seed, epoch]).permutation(len(split.train_per_shard)).tolist()
    buffers, cur, n = [], [], 0
    for i in order:
        if split.train_per_shard[i] == 0:
            continue
        cur.append(i)
        n += split.train_per_shard[i]
        if n >= buffer_tokens:
            buffers.append(cur)
            cur, n = [], 0
    return buffers + ([cur] if cur else [])


def _load_buffer(store: Store, split: Split, shards: list[int], seed: int, epoch: int, b: int) -> torch.Tensor:
    """The training rows of ``shards``, permuted with the seed (seed, epoch, buffer); storage dtype."""
    rows = []
    for i in shards:
        sh = store.shard(i)
        rows.append(sh.acts_TS[split.train_mask(sh)])
    x = torch.cat(rows)
    perm = torch.from_numpy(np.random.default_rng([seed, epoch, b]).permutation(len(x)))
    return x[perm]


def iter_batches(store: Store, split: Split, batch_size: int, seed: int, buffer_tokens: int,
                 start: int = 0) -> Iterator[torch.Tensor]:
    """float32 [batch_size, sites] batches of the training tokens, epoch after epoch without end, beginning at
    sample ``start`` of the stream (buffers before it are skipped unread)."""
    epoch, skip = divmod(start, split.n_train)
    parts: list[torch.Tensor] = []
    have = 0
    while True:
        for b, shards in enumerate(_epoch_buffers(split, seed, epoch, buffer_tokens)):
            size = sum(split.train_per_shard[i] for i in shards)
            if skip >= size:
                skip -= size
                continue
            x = _load_buffer(store, split, shards, seed, epoch, b)[skip:]
            skip = 0
            while len(x):
                take = min(batch_size - have, len(x))
                parts.append(x[:take])
                have += take
                x = x[take:]
                if have == batch_size:
                    yield torch.cat(parts).float() if len(parts) > 1 else parts[0].float()
                    parts, have = [], 0
        epoch += 1


def input_statistics(store: Store, split: Split) -> dict[str, torch.Tensor]:
    """Exact float64 mean and std per site and mean L2 norm over the training tokens (one pass)."""
    S = len(store.sites)
    s1, s2 = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64)
    norm = torch.zeros((), dtype=torch.float64)
    for sh in store.shards():
        x = sh.acts_TS[split.train_mask(sh)].double()
        s1 += x.sum(0)
        s2 += (x ** 2).sum(0)
        norm += x.norm(dim=1).sum()
    n = split.n_train
    mean = s1 / n
    return {"mean_S": mean, "std_S": (s2 / n - mean ** 2).clamp(min=0).sqrt(), "mean_norm": norm / n}


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
    widths = cfg.widths()
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


def _prepare_checkpoints(folder: Path, key: dict[str, Any], overwrite: bool) -> Path | None:
    """The newest complete checkpoint of the same settings (None: start fresh); refuses other settings."""
    ckpts = folder / K.CHECKPOINTS_DIR
    stamp = ckpts / "settings.json"
    if ckpts.is_dir() and (overwrite or not stamp.is_file()):
        shutil.rmtree(ckpts)
    elif ckpts.is_dir() and read_json(stamp) != json.loads(json.dumps(key)):
        raise SaeError(f"{ckpts} holds checkpoints of other settings or another store; pass --overwrite to "
                       f"discard them, or rerun with the same settings to resume")
    ckpts.mkdir(parents=True, exist_ok=True)
    write_json(stamp, key)
    newest = newest_checkpoint(ckpts)
    for p in ckpts.iterdir():  # unfinished or superseded ones
        if p.is_dir() and p != newest:
            shutil.rmtree(p)
    return newest


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
    key = {"settings": cfg.settings(), "store_key": store.manifest["store_key"]}
    resume = _prepare_checkpoints(folder, key, cfg.overwrite)
    ckpts = folder / K.CHECKPOINTS_DIR
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
    """SAELens' inference SAE (cfg.json + sae_weights.safetensors) into ``folder``; each file atomically."""
    tmp = folder / ".sae_inference.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    weights, cfg_path = sae.save_inference_model(tmp)
    for p in (weights, cfg_path):
        write_with(folder / p.name, lambda t, p=p: shutil.copyfile(p, t))
    shutil.rmtree(tmp)


def sae_settings_key(cfg: SaeConfig, store: Store) -> str:
    blob = json.dumps({"settings": cfg.settings(), "store_key": store.manifest["store_key"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


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
    (latents firing per token), and the fraction of latents that never fire (dead) or do (alive). Encoding is
    per token (the inference SAE)."""
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
    dead = 1.0 - float(fired_L.float().mean())
    per_site = (sse_S / var_S.clamp(min=1e-30)).tolist()
    return {"n_tokens": n, "fvu": float(sse_S.sum() / var_S.sum()), "fvu_mean_over_adapters": float(np.mean(per_site)),
            "fvu_per_adapter": per_site, "l0": l0 / n, "dead_frac": dead, "alive_frac": 1.0 - dead,
            "n_alive": int(fired_L.sum()), "d_sae": L}


# ---------------------------------------------------------------- stage 3.0


def sae_folder(cfg, run_name: str) -> Path:
    return Path(cfg.out) if getattr(cfg, "out", None) else results_dir(cfg.profile, K.SAE_STAGE, run_name)


def train_stage(cfg: SaeConfig) -> Path:
    """3.0: train (or resume, or skip when finished) the SAE of the run's store, evaluate it, save it."""
    from rank1.store import check_writable, open_for_run

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
    done, key = folder / K.CONFIG_JSON, sae_settings_key(cfg, store)
    if done.is_file() and not cfg.overwrite:
        if read_json(done).get("settings_key") == key:
            log.info("the SAE in %s is finished; skipping (--overwrite retrains)", folder)
            return folder
        raise SaeError(f"{folder} holds an SAE of other settings or another store; pass --overwrite to replace it, "
                       f"or --out DIR")
    check_writable(folder.parent if not folder.exists() else folder)
    done.unlink(missing_ok=True)
    import sae_lens

    trained, report = train_sae(cfg, store, split, folder)
    save_inference_sae(trained, folder)
    sae = sae_lens.SAE.load_from_disk(folder, device=str(cfg.torch_device())).eval()
    metrics: dict[str, Any] = {"heldout": evaluate_sae(sae, store, split), "split": split.describe(store),
                               "training": {k: report[k] for k in ("steps", "tokens", "dead_frac_training")}}
    if cfg.loss_gap:
        from rank1.sae.splice import heldout_items, loss_gap

        loaded = run.load(cfg.precision)
        items = heldout_items(store, split, loaded.tokenizer, cfg.loss_gap_tokens)
        metrics["loss_gap"] = loss_gap(loaded, sae, items, cfg.batch_tokens, cfg.skip_first_tokens)
    write_json(folder / K.SAE_METRICS_JSON, metrics)
    write_json(folder / K.SAE_TRAIN_LOG_JSON, report["log"])
    h = metrics["heldout"]
    write_run_metadata(folder, cfg, {
        "identity": store.identity, "store": str(src), "store_key": store.manifest["store_key"], "settings_key": key,
        "sites": store.sites, "n_tokens": store.n_tokens, "split": split.describe(store),
        "normalization": report["normalization"], "sae_lens_version": sae_lens.__version__,
        "sae": {"training_architecture": trained.cfg.architecture(), "saved_architecture": sae.cfg.architecture(),
                "d_in": d_in, "d_sae": sae.cfg.d_sae, "k": cfg.k, "skip_first_tokens": cfg.skip_first_tokens,
                "threshold": float(sae.threshold.detach().max())},
        "summary": {"fvu": h["fvu"], "l0": h["l0"], "dead_frac": h["dead_frac"], "alive_frac": h["alive_frac"],
                    "loss_gap_share": metrics.get("loss_gap", {}).get("share", {}).get("value")}})
    shutil.rmtree(folder / K.CHECKPOINTS_DIR, ignore_errors=True)
    return folder
