"""Configs of the stage-2 scripts (``2_lora_activation_interp/``): the activation stores (2.0, 2.4; profile
table ``[extract]``), their top-k examples (2.1, 2.5; ``[topk]``), the LoRA dashboard (2.3; ``[dashboard]``),
the random-direction control (2.6; ``[extract]`` keys ``random_*``, ``[topk]``), the class shares of one side
(2.3 analysis; ``[interpretability]``) and LoRA vs. MLP vs. the control (2.8; ``[lora_vs_mlp]``).
The autointerp scripts 2.2 / 2.7 parse :class:`rank1.autointerp.stage.AutointerpConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from rank1.config import option
from rank1.runs import RunOptions
from rank1.stats import DEFAULT_RESAMPLES
from rank1.store import DTYPES

SIDES = ("lora", "mlp", "random")  # adapter features, MLP neurons, the random-direction control


@dataclass
class ExtractConfig(RunOptions):
    corpus: str = option("s1-format records: a .jsonl/.parquet path, dataset folder or 'synthetic' "
                         "(empty: the profile's dataset, what the run trained on)", "")
    dataset: str = option("the profile's dataset ('synthetic': data/<profile>/train.jsonl; s1K-1.1 on the paper "
                          "profile)", "synthetic")
    max_tokens: int = option("stop adding documents once this many tokens are in (0: all)", 0)
    max_docs: int = option("at most this many documents (0: all)", 0)
    block_size: int = option("truncate each document to this many tokens (as in training)", 20000)
    shard_tokens: int = option("tokens per shard (memory per worker; resume granularity)", 65536)
    batch_tokens: int = option("padded tokens per forward pass", 8192)
    dtype: str = option("storage dtype: float16 (checked for overflow) | bfloat16 | float32", "float16")
    precision: str = option("compute precision: auto | bf16 | fp32", "auto")
    num_procs: int = option("data-parallel CPU worker processes", 1)
    num_gpus: int = option("data-parallel GPUs, one worker each (0: CPU or the one visible GPU)", 0)
    neurons_per_layer: int = option("MLP side: neurons per layer (0: as many as the run has adapters per layer)", 0)
    neuron_seed: int = option("MLP side: seed of the neuron sample", 0)
    random_seed: int = option("random-direction control (2.6): seed of the directions", 0)
    random_max_tokens: int = option("random-direction control (2.6): tokens of the corpus it reads, a prefix of the "
                                    "LoRA store's (0: the same as --max_tokens)", 0)
    out: str | None = option("output folder (default: results/<profile>/<kind>_activations/<run>)")
    overwrite: bool = option("recompute even if a finished store exists", False)

    @property
    def corpus_source(self) -> str:
        """What the store is extracted from: ``--corpus``, else the profile's dataset."""
        return self.corpus or self.dataset

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if min(self.shard_tokens, self.batch_tokens, self.block_size) < 1 or self.num_procs < 1 or self.num_gpus < 0:
            raise ValueError("need --shard_tokens, --batch_tokens, --block_size, --num_procs >= 1 and --num_gpus >= 0")
        if min(self.max_tokens, self.max_docs, self.neurons_per_layer, self.random_max_tokens) < 0:
            raise ValueError("--max_tokens, --max_docs, --neurons_per_layer and --random_max_tokens must be >= 0")
        if self.max_tokens and self.random_max_tokens > self.max_tokens:
            raise ValueError(f"--random_max_tokens ({self.random_max_tokens}) must be at most --max_tokens "
                             f"({self.max_tokens}): the control reads a prefix of the LoRA store's corpus")


@dataclass
class TopKConfig(RunOptions):
    store: str | None = option("activation store folder (default: the run's, under results/)")
    k: int = option("top examples per feature (feature = adapter x polarity)", 50)
    context: int = option("tokens of context on each side of an example", 30)
    n_per_decile: int = option("scoring examples drawn from each decile of the active values", 5)
    n_random: int = option("scoring examples from windows where the feature stays below its threshold", 20)
    active_frac: float = option("a token activates a feature above this fraction of the feature's maximum", 0.1)
    seed: int = option("seed of the scoring samples", 0)
    out: str | None = option("output folder (default: results/<profile>/<kind>_topk/<run>)")
    overwrite: bool = option("recompute even if the top-k examples exist", False)


@dataclass
class DashboardConfig(RunOptions):
    topk: str | None = option("top-k folder of 2.1 (default: results/<profile>/lora_topk/<run>)")
    n_examples: int = option("top examples shown per feature (at most the k of 2.1)", 50)
    out: str | None = option("output folder (default: results/<profile>/lora_dashboard/<run>)")

    def __post_init__(self):
        if self.n_examples < 1:
            raise ValueError(f"--n_examples must be >= 1, got {self.n_examples}")


@dataclass
class InterpretabilityConfig(RunOptions):
    kind: str = option("which side: lora (adapter features) | mlp (the MLP-neuron baseline) | random (the "
                       "random-direction control)", "lora")
    autointerp: str | None = option("autointerp folder (default: results/<profile>/<kind>_autointerp/<run>)")
    layer_bin: int = option("layers per bin (the authors used 8 on 64 layers); 0: thirds of the network", 0)
    n_resamples: int = option("bootstrap resamples of every CI", DEFAULT_RESAMPLES)
    seed: int = option("bootstrap seed", 0)
    out: str | None = option("output folder (default: results/<profile>/<kind>_interpretability/<run>)")

    def __post_init__(self):
        if self.kind not in SIDES:
            raise ValueError(f"--kind must be one of {list(SIDES)}, got {self.kind!r}")
        if self.layer_bin < 0 or self.n_resamples < 100:
            raise ValueError("need --layer_bin >= 0 and --n_resamples >= 100")


@dataclass
class CompareConfig(RunOptions):
    lora: str | None = option("LoRA autointerp folder (default: results/<profile>/lora_autointerp/<run>)")
    mlp: str | None = option("MLP autointerp folder (default: results/<profile>/mlp_autointerp/<run>)")
    random: str | None = option("random-direction control's autointerp folder (default: results/<profile>/"
                                "random_autointerp/<run>; left out, with a warning, only when the default is absent)")
    density_bins: int = option("firing-density bins of the density-matched comparison (pooled quantiles)", 5)
    n_resamples: int = option("bootstrap resamples of every CI", DEFAULT_RESAMPLES)
    seed: int = option("bootstrap seed", 0)
    out: str | None = option("output folder (default: results/<profile>/lora_vs_mlp/<run>)")

    def __post_init__(self):
        if self.n_resamples < 100 or self.density_bins < 1:
            raise ValueError("need --n_resamples >= 100 and --density_bins >= 1")
