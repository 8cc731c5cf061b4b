"""Configs of the stage-3 scripts (``3_lora_sae/``): one dataclass per script, built from dataclass defaults <
the profile's table < the command line (:func:`rank1.config.parse_config`); ``--help`` lists every field.

3.3.0 and 3.3.1 parse stage 2's :class:`rank1.autointerp.stage.AutointerpConfig` from the profile tables
:data:`AUTOINTERP_SECTIONS` (``[sae_autointerp]`` over ``[autointerp]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rank1.autointerp.stage import AutointerpConfig
from rank1.config import option
from rank1.runs import RunOptions
from rank1.sae.categories import MEASURES

__all__ = ["AUTOINTERP_SECTIONS", "NORMALIZATIONS", "AutointerpConfig", "DensitiesConfig", "DonutConfig",
           "SaeConfig", "SaeDashboardConfig", "SaeFeaturesConfig"]

NORMALIZATIONS = ("none", "scalar", "per_site")
AUTOINTERP_SECTIONS = ("autointerp", "sae_autointerp")


@dataclass
class SaeConfig(RunOptions):
    """Options of 3.0 (profile table ``[sae]``)."""

    store: str | None = option("activation store of 2.0 (default: results/<profile>/lora_activations/<run>)")
    expansion: int = option("dictionary size = expansion x adapters", 8)
    k: int = option("latents kept per token on average (BatchTopK over the batch)", 16)
    matryoshka_widths: list[int] = option("nested dictionary widths for a Matryoshka BatchTopK SAE (empty: plain "
                                          "BatchTopK)", [])
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
        widths = self.matryoshka_widths
        if any(w < 1 for w in widths) or any(a >= b for a, b in zip(widths, widths[1:], strict=False)):
            raise ValueError(f"--matryoshka_widths must be positive and strictly increasing, got {widths}")

    def settings(self) -> dict[str, Any]:
        """What determines the trained SAE (with the store): two runs with equal settings train the same one."""
        names = ("expansion", "k", "matryoshka_widths", "lr", "warmup_steps", "batch_size", "aux_alpha",
                 "dead_tokens", "epochs", "heldout_frac", "normalize", "skip_first_tokens", "seed", "buffer_tokens")
        return {n: getattr(self, n) for n in names}

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class SaeFeaturesConfig(RunOptions):
    """Options of 3.1 (profile table ``[sae_features]``)."""

    store: str | None = option("activation store of 2.0 (default: results/<profile>/lora_activations/<run>)")
    sae: str | None = option("SAE folder of 3.0 (default: results/<profile>/sae/<run>)")
    k: int = option("top examples per feature", 32)
    context: int = option("tokens of context on each side of an example", 48)
    n_per_decile: int = option("scoring examples from each decile of the feature's firing values", 5)
    n_random: int = option("scoring examples from windows where the feature never fires", 20)
    seed: int = option("seed of the scoring samples", 0)
    block: int = option("latents encoded per step (memory: shard tokens x block floats)", 256)
    device: str = option("device of the encoder: cpu | cuda", "cpu")
    out: str | None = option("output folder (default: results/<profile>/sae_features/<run>)")
    overwrite: bool = option("recompute even if the features exist", False)

    def __post_init__(self):
        if self.k < 1 or self.context < 0 or self.n_per_decile < 0 or self.n_random < 0 or self.block < 1:
            raise ValueError("need --k >= 1, --context >= 0, --n_per_decile >= 0, --n_random >= 0, --block >= 1")


@dataclass
class SaeDashboardConfig(RunOptions):
    """Options of 3.2 (profile table ``[sae_dashboard]``)."""

    features: str | None = option("features folder of 3.1 (default: results/<profile>/sae_features/<run>)")
    autointerp: str | None = option("folder with explanations.jsonl / categories.json (default: "
                                    "results/<profile>/sae_autointerp/<run>; used when present)")
    n_examples: int = option("top examples per feature (at most the k of 3.1)", 20)
    context: int = option("tokens shown on each side of an example (at most the context of 3.1)", 24)
    page_size: int = option("features per data file", 32)
    out: str | None = option("output folder (default: results/<profile>/sae_dashboard/<run>)")

    def __post_init__(self):
        if min(self.n_examples, self.page_size) < 1 or self.context < 0:
            raise ValueError("need --n_examples >= 1, --page_size >= 1 and --context >= 0")


@dataclass
class DensitiesConfig(RunOptions):
    """Options of 3.3.2 (profile table ``[sae_densities]``)."""

    features: str | None = option("features folder of 3.1 (default: results/<profile>/sae_features/<run>)")
    autointerp: str | None = option("folder with categories.json; the output goes there too (default: "
                                    "results/<profile>/sae_autointerp/<run>)")
    overwrite: bool = option("recompute even if finished densities exist", False)


@dataclass
class DonutConfig(RunOptions):
    """Options of 3.3.3 (profile table ``[sae_donut]``)."""

    autointerp: str | None = option("folder with category_densities.json; the figures go there too (default: "
                                    "results/<profile>/sae_autointerp/<run>)")
    measures: list[Literal[MEASURES]] = option("one donut each (mass is Figure 3)", MEASURES)

    def __post_init__(self):
        if not self.measures:
            raise ValueError(f"--measures is empty; give some of {', '.join(MEASURES)}")
