"""Stage 0, one function per script: the data (``s1_peft/prepare_data.py``), the training run
(``s1_peft/train.py``) and the benchmark evaluation with its recovery tables (``s1_peft/eval_benchmarks.py``).

Each ``run_<script>(cfg)`` decides what to skip or resume, writes the artifacts and returns the folder.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch

from rank1.artifacts import file_sha256, write_run_metadata
from rank1.benchmarks import Benchmark, BenchmarkSpec, load_benchmark
from rank1.config import data_dir, results_dir
from rank1.constants import EVAL_JSONL, TRAIN_JSONL
from rank1.data import load_reasoning_records
from rank1.generate import Budget, FixedLogprobs, HFBackend, VLLMBackend, check_logprob_parity, think_prompt
from rank1.runs import Run, RunError, resolve_run
from rank1.synth import write_splits
from rank1.training.config import DataConfig, EvalConfig, TrainConfig
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
from rank1.training.recovery import write_tables
from rank1.training.trainer import train

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- prepare_data.py


def run_prepare_data(cfg: DataConfig) -> Path:
    """Write the profile's generated train and held-out splits (skipped when both exist, unless
    overwrite); a dataset that is not 'synthetic' is only checked to load. Returns the data folder."""
    out = data_dir(cfg.profile)
    if cfg.dataset != "synthetic":
        records = load_reasoning_records(cfg.dataset)
        log.info("dataset %s loads: %d records", cfg.dataset, len(records))
        return out
    if (out / TRAIN_JSONL).is_file() and (out / EVAL_JSONL).is_file() and not cfg.overwrite:
        log.info("%s already holds train.jsonl and eval.jsonl; skipping (--overwrite regenerates)", out)
        return out
    write_splits(out, cfg.n_train, cfg.n_eval, cfg.seed, tuple(cfg.families.split(",")))
    write_run_metadata(out, cfg)
    log.info("wrote %d train and %d held-out records to %s", cfg.n_train, cfg.n_eval, out)
    return out


# ---------------------------------------------------------------- train.py


def run_train(cfg: TrainConfig) -> Path:
    """Train, resume or skip one run (:func:`rank1.training.trainer.train`); returns its folder."""
    folder = train(cfg)
    log.info("run folder: %s", folder)
    return folder


# ---------------------------------------------------------------- eval_benchmarks.py


def resolve_variants(cfg: EvalConfig) -> list[Variant]:
    """The variants in table order: paper variants as asked, then the extra runs. The full finetune and the
    extra runs must share the LoRA run's base model (recovery divides by the full finetune's gain over it)."""
    lora = cfg.resolve_run()
    out = []
    for name in parse_variants(cfg.variants):
        if name == "full":
            full = resolve_run(cfg.full_run, cfg.profile, full=True, require_rank=None)
            check_same_base_model(lora, full, "the full finetune", "--full_run")
            out.append(Variant("full", full, "model"))
        else:
            out.append(Variant(name, lora, LORA_MODES[name]))
    for spec in (r.strip() for r in cfg.extra_runs.split(",") if r.strip()):
        run = resolve_run(spec, cfg.profile, require_rank=None)
        if run.name in {v.name for v in out}:
            raise ValueError(f"--extra_runs {spec!r} is already a row of the table")
        check_same_base_model(lora, run, "the extra run", "--extra_runs")
        out.append(Variant(run.name, run, "model"))
    return out


def check_same_base_model(lora: Run, other: Run, what: str, flag: str) -> None:
    """Raise when ``other`` was trained on another base model than ``lora`` (same id, or the same model folder
    name: a hub id and its downloaded copy; a run that does not record its base model is not checked)."""
    a, b = lora.model_id, other.model_id
    if a is None or b is None or a == b or Path(a).name.lower() == Path(b).name.lower():
        return
    raise RunError(f"{what} {other.name!r} was trained on base model {b!r}, but the LoRA run {lora.name!r} on "
                   f"{a!r}: its rows would compare different base models; pass {flag} with a run of {a!r}")


def evaluate_hf(cfg: EvalConfig, variants: list[Variant], benchmarks: list[Benchmark], budget: Budget,
                folder: Path) -> None:
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


def evaluate_vllm(cfg: EvalConfig, variants: list[Variant], benchmarks: list[Benchmark], budget: Budget,
                  folder: Path) -> None:
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


def run_eval_benchmarks(cfg: EvalConfig) -> Path:
    """Generate and grade every (variant, benchmark) not yet done (or regrade them), then write the recovery
    tables, the figure and the metadata; returns ``results/<profile>/eval/<name>``."""
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
    return folder
