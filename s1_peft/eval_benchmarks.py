"""Benchmark evaluation and the recovery tables (paper Table 1 and Table 2).

Usage:
    python s1_peft/eval_benchmarks.py --profile tiny                       # held-out + 30 MATH500 problems
    python s1_peft/eval_benchmarks.py --profile paper --backend vllm --gpqa_path /secure/gpqa_diamond.csv
    python s1_peft/eval_benchmarks.py --benchmarks heldout --limit 16 --variants base,lora
    python s1_peft/eval_benchmarks.py --extra_runs tiny-r1-all-mlp,tiny-r1-all-attn   # retrained subsets
    python s1_peft/eval_benchmarks.py --regrade                            # regrade saved generations

Variants: base (adapter disabled), lora, full (the --full run), mlp_ablated / attn_ablated (all MLP or
all attention adapters ablated by hooks), plus --extra_runs. Greedy s1 generation with budget forcing
(think up to --think_tokens, then "<|im_start|>answer\\nAnswer:" and up to --answer_tokens).
Writes results/<profile>/eval/<name>/: generations/<variant>__<benchmark>.jsonl (every generation and
its grade; a finished file is reused), recovery.json, recovery_tables.md, recovery_bars.{pdf,png},
config.json (with the identity of every run) and argv.json.
"""

import gc
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rank1.artifacts import write_run_metadata
from rank1.benchmarks import BenchmarkSpec, load_benchmark
from rank1.config import option, parse_config, results_dir
from rank1.training.evaluate import (
    LORA_MODES,
    Variant,
    evaluate_variant,
    generations_path,
    parse_variants,
    regrade_file,
    variant_context,
    vllm_weights,
)
from rank1.generate import Budget, FixedLogprobs, HFBackend, VLLMBackend, check_logprob_parity, think_prompt
from rank1.logs import run_main
from rank1.training.recovery import write_tables
from rank1.runs import PRECISIONS, RunOptions, resolve_run

log = logging.getLogger("s1_peft.eval_benchmarks")


@dataclass
class EvalConfig(RunOptions):
    full_run: str | None = option("full finetune run (name or folder); default: the profile's newest")
    variants: str = option("comma list of base, lora, full, mlp_ablated, attn_ablated",
                           "base,lora,full,mlp_ablated,attn_ablated")
    extra_runs: str = option("comma list of further runs shown as extra rows (e.g. tiny-r1-all-mlp)", "")
    benchmarks: str = option("comma list of heldout, math500, aime24, gpqa; name:N takes the first N", "heldout")
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
    tensor_parallel: int = option("vllm: GPUs per model", 1)
    max_model_len: int = option("vllm: context length", 32768)
    gpu_memory_utilization: float = option("vllm: share of GPU memory to take", 0.9)
    parity_prompts: int = option("vllm: prompts of the first-token log-prob parity check", 4)
    parity_atol: float = option("vllm: largest |log-prob difference| accepted vs. the PEFT model", 0.1)

    def __post_init__(self):
        if self.think_tokens < 1 or self.answer_tokens < 1 or self.batch_size < 1 or self.limit < 0:
            raise ValueError("need --think_tokens, --answer_tokens, --batch_size >= 1 and --limit >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend must be hf or vllm, got {self.backend!r}")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None and not self.regrade:
            raise ValueError("--backend vllm asked for, but vllm is not installed (it needs a CUDA torch): "
                             "pip install vllm on a GPU machine, or use --backend hf")
        parse_variants(self.variants)
        BenchmarkSpec.parse(self.benchmarks)


def resolve_variants(cfg: EvalConfig) -> list[Variant]:
    """The variants in table order: paper variants as asked, then the extra runs."""
    lora = cfg.resolve_run()
    out = []
    for name in parse_variants(cfg.variants):
        if name == "full":
            out.append(Variant("full", resolve_run(cfg.full_run, cfg.profile, full=True, require_rank=None),
                               "model"))
        else:
            out.append(Variant(name, lora, LORA_MODES[name]))
    for spec in (r.strip() for r in cfg.extra_runs.split(",") if r.strip()):
        run = resolve_run(spec, cfg.profile, require_rank=None)
        if run.name in {v.name for v in out}:
            raise ValueError(f"--extra_runs {spec!r} is already a row of the table")
        out.append(Variant(run.name, run, "model"))
    return out


def evaluate_hf(cfg, variants, benchmarks, budget, folder) -> None:
    """Variants that share weights share one loaded model (base/lora/ablations: one LoRA run)."""
    groups: dict = {}
    for v in variants:
        groups.setdefault(v.run.weights_dir, []).append(v)
    for group in groups.values():
        missing = cfg.overwrite or any(not generations_path(folder, v.name, b.name).is_file()
                                       for v in group for b in benchmarks)
        sha = group[0].run.identity()["weights_sha256"]
        loaded = group[0].run.load(cfg.precision) if missing else None
        backend = HFBackend(loaded.model, loaded.tokenizer, cfg.batch_size, loaded.autocast) if loaded else None
        for v in group:
            evaluate_variant(backend, loaded.tokenizer if loaded else None, v, loaded, benchmarks, budget, folder,
                             sha, cfg.overwrite)
        del loaded, backend
        gc.collect()


def evaluate_vllm(cfg, variants, benchmarks, budget, folder) -> None:
    """Per variant: reference log-probs from the PEFT model (then freed), vLLM, parity check, generate."""
    for v in variants:
        if not cfg.overwrite and all(generations_path(folder, v.name, b.name).is_file() for b in benchmarks):
            continue
        loaded = v.run.load(cfg.precision, device_map="auto")
        prompts = [think_prompt(loaded.tokenizer, it.question) for it in benchmarks[0].items[:cfg.parity_prompts]]
        with variant_context(loaded, v.mode):
            reference = FixedLogprobs(HFBackend(loaded.model, loaded.tokenizer).first_token_logprobs(prompts, 5))
        tokenizer = loaded.tokenizer
        del loaded
        gc.collect()
        torch.cuda.empty_cache()
        model_path, adapter = vllm_weights(v, folder / ".vllm_adapters")
        backend = VLLMBackend(model_path, tokenizer, adapter, cfg.tensor_parallel, cfg.max_model_len,
                              cfg.gpu_memory_utilization)
        check_logprob_parity(reference, backend, prompts, k=5, atol=cfg.parity_atol, what=f"vllm {v.name}")
        evaluate_variant(backend, tokenizer, v, None, benchmarks, budget, folder,
                         v.run.identity()["weights_sha256"], cfg.overwrite)
        del backend
        gc.collect()


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(cfg: EvalConfig) -> None:
    benchmarks = [load_benchmark(s, cfg.profile, cfg.gpqa_path, cfg.gpqa_seed, cfg.limit)
                  for s in BenchmarkSpec.parse(cfg.benchmarks)]
    variants = resolve_variants(cfg)
    folder = results_dir(cfg.profile, "eval", cfg.name or variants[0].run.name)
    budget = Budget(cfg.think_tokens, cfg.answer_tokens)
    if cfg.regrade:
        for v in variants:
            for b in benchmarks:
                regrade_file(generations_path(folder, v.name, b.name), b)
    elif cfg.backend == "vllm":
        evaluate_vllm(cfg, variants, benchmarks, budget, folder)
    else:
        evaluate_hf(cfg, variants, benchmarks, budget, folder)
    title = f"{cfg.profile}: {variants[0].run.name}"
    summary = write_tables(folder, [v.name for v in variants], [b.name for b in benchmarks], title)
    write_run_metadata(folder, cfg, {
        "runs": {v.name: {**v.run.identity(), "mode": v.mode} for v in variants},
        "benchmarks": {b.name: {"source": b.source, "n": len(b.items), "sha256": file_sha256(b.source)}
                       for b in benchmarks}})
    for b in benchmarks:
        log.info("%s: %s", b.name, "  ".join(f"{v.name} {100 * summary['accuracy'][v.name][b.name]['value']:.1f}%"
                                             for v in variants))
    log.info("wrote %s", folder)


if __name__ == "__main__":
    config = parse_config(EvalConfig, "eval", __doc__)
    run_main(main, config)
