"""The config of every stage-1 script (``1_lora_adapter_ablations/``; one profile table, ``[ablation]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rank1.config import dataset_file, option
from rank1.runs import PRECISIONS, RunOptions
from rank1.stats import DEFAULT_RESAMPLES

FAMILIES = ("layer", "adapter", "type")


@dataclass
class AblationConfig(RunOptions):
    """Options of every stage-1 script (one profile table, ``[ablation]``)."""

    dataset: str = option("sequences: 'synthetic' (data/<profile>/train.jsonl), an s1-format file or a "
                          "hub dataset id", "synthetic")
    n_samples: int = option("sequences in the fixed sample", 16)
    seed: int = option("seed of the sample draw", 42)
    max_tokens: int = option("truncate each sequence to this many tokens", 2048)
    families: list[Literal[FAMILIES]] = option("ablation families", FAMILIES)
    cache_limit_mb: float = option("memory bound of the cached prefix per batch (batches are cut to fit)", 4096.0)
    token_chunk: int = option("positions per LM-head/KL chunk (bounds the [chunk, vocab] float64 buffers)", 256)
    cached_prefix: bool = option("run only the suffix after the first ablated layer (same results, faster)", True)
    n_resamples: int = option("bootstrap resamples over sequences", DEFAULT_RESAMPLES)
    precision: str = option(f"one of {PRECISIONS}", "auto")
    greedy_samples: int = option("iterative MLP ablation: the first n sequences of the sample score the "
                                 "candidates (0: all)", 0)
    greedy_rescore_every: int = option("iterative MLP ablation: rescore all remaining candidates every n "
                                       "removals (1: exact greedy)", 1)
    results_folder: str | None = option("figure scripts: read this results folder (default: "
                                        "results/<profile>/ablations/<run>)")
    viz_sequence: int = option("per-token KL figure: which sequence of the sample (position in the sample)", 0)
    viz_top: int = option("per-token KL figure: how many layers (largest mean KL) to draw", 3)
    overwrite: bool = option("recompute existing results", False)

    def __post_init__(self):
        if self.n_samples < 1 or self.max_tokens < 8 or self.token_chunk < 1 or self.n_resamples < 1:
            raise ValueError("need --n_samples >= 1, --max_tokens >= 8, --token_chunk >= 1, --n_resamples >= 1")
        if self.cache_limit_mb <= 0:
            raise ValueError(f"--cache_limit_mb must be > 0, got {self.cache_limit_mb}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.greedy_samples < 0 or self.greedy_rescore_every < 1 or self.viz_top < 1:
            raise ValueError("need --greedy_samples >= 0, --greedy_rescore_every >= 1, --viz_top >= 1")
        if not self.families:
            raise ValueError(f"--families is empty; give some of {', '.join(FAMILIES)}")

    def dataset_path(self) -> str:
        return dataset_file(self.dataset, self.profile)

    def sample_key(self) -> dict[str, Any]:
        """What fixes the sample: two results with equal keys measured the same sequences."""
        return {"dataset": self.dataset, "n_samples": self.n_samples, "seed": self.seed,
                "max_tokens": self.max_tokens}
