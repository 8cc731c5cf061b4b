"""Stage 0, one function per script: the data (``s1_peft/prepare_data.py``), the training run
(``s1_peft/train.py``) and the benchmark evaluation with its recovery tables (``s1_peft/eval_benchmarks.py``).

Each ``run_<script>(cfg)`` decides what to skip or resume, writes the artifacts and returns the folder.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from rank1.artifacts import file_sha256, write_json, write_run_metadata
from rank1.benchmarks import Benchmark, load_benchmark
from rank1.config import data_dir, results_dir
from rank1.constants import EVAL_JSONL, TRAIN_JSONL
from rank1.data import load_reasoning_records
from rank1.generate import Budget, HFBackend, think_prompt
from rank1.runs import Run, RunError, resolve_run, run_from_folder
from rank1.serving import FixedLogprobs, ReplayBackend, VLLMEngine, check_logprob_parity, generate_in_subprocess
from rank1.synth import write_splits
from rank1.training.config import DataConfig, EvalConfig, TrainConfig
from rank1.training.evaluate import (
    LORA_MODES,
    Variant,
    evaluate_variant,
    generations_path,
    parity_path,
    regrade_file,
    saved_parity,
    variant_context,
    vllm_weights,
)
from rank1.training.recovery import EQUAL_BUDGET, replicate_folders, write_tables
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
    write_splits(out, cfg.n_train, cfg.n_eval, cfg.seed, tuple(cfg.families))
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
    """The variants in table order: paper variants as asked, then the replicates found of the LoRA run and
    of the full finetune (:func:`replicate_variants`), then the extra runs. The full finetune and the
    other runs must share the LoRA run's base model (recovery divides by the full finetune's gain over it)."""
    lora = cfg.resolve_run()
    out = []
    for name in cfg.variants:
        if name == "full":
            full = resolve_run(cfg.full_run, cfg.profile, full=True, require_rank=None)
            check_same_base_model(lora, full, "the full finetune", "--full_run")
            out.append(Variant("full", full, "model"))
        else:
            out.append(Variant(name, lora, LORA_MODES[name]))
    out += replicate_variants(lora, next((v.run for v in out if v.name == "full"), None), "lora" in cfg.variants)
    for spec in cfg.extra_runs:
        run = resolve_run(spec, cfg.profile, require_rank=None)
        if run.name in {v.name for v in out}:
            raise ValueError(f"--extra_runs {spec!r} is already a row of the table")
        check_same_base_model(lora, run, "the extra run", "--extra_runs")
        out.append(Variant(run.name, run, "model"))
    return out


def replicate_variants(lora: Run, full: Run | None, with_lora: bool) -> list[Variant]:
    """The replicates of the LoRA run (``lora-seed<k>``, adapter on; only when the ``lora`` row is asked) and of
    the full finetune (``full-seed<k>``, ``full_equal[-seed<k>]``) under the runs folders' ``replicates/``
    (:func:`rank1.training.recovery.replicate_folders`); one that has not finished training is named in a warning
    and left out."""
    found = []
    if with_lora and lora.folder is not None:
        found += [(f"lora{sfx}", p) for sfx, p in replicate_folders(lora.name, False).items()
                  if not sfx.startswith("-equal")]
    if full is not None and full.folder is not None:
        found += [(f"{EQUAL_BUDGET}{sfx.removeprefix('-equal')}" if sfx.startswith("-equal") else f"full{sfx}", p)
                  for sfx, p in replicate_folders(full.name, True).items()]
    out = []
    for name, folder in found:
        try:
            run = run_from_folder(folder, require_rank=None)
        except RunError as e:
            log.warning("replicate %s left out of the recovery tables: %s", folder, e)
            continue
        try:
            check_same_base_model(lora, run, f"the replicate {name}", "--run")
        except RunError:
            raise RunError(f"the replicate {folder} was trained on base model {run.model_id!r}, the LoRA run "
                           f"{lora.name!r} on {lora.model_id!r}: move it out of {folder.parent} or retrain it on "
                           f"{lora.model_id!r}") from None
        out.append(Variant(name, run, LORA_MODES["lora"] if name.startswith("lora") else "model"))
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


def parity_prompts(cfg: EvalConfig, tokenizer, benchmarks: list[Benchmark]) -> list[str]:
    return [think_prompt(tokenizer, it.question) for it in benchmarks[0].items[:cfg.parity_prompts]]


def peft_references(cfg: EvalConfig, variants: list[Variant], benchmarks: list[Benchmark]) -> dict:
    """Per variant, the PEFT model's next-token log-probs on the parity prompts, each run loaded once and freed
    before vLLM takes the GPUs; also the tokenizer of the first run."""
    refs, tokenizer, groups = {}, None, {}
    for v in variants:
        groups.setdefault(v.run.weights_dir, []).append(v)
    for group in groups.values():
        loaded = group[0].run.load(cfg.precision, device_map="auto")
        tokenizer = tokenizer or loaded.tokenizer
        prompts = parity_prompts(cfg, loaded.tokenizer, benchmarks)
        for v in group:
            with variant_context(loaded, v.mode, fold=False):
                refs[v.name] = HFBackend(loaded.model, loaded.tokenizer).first_token_logprobs(prompts, cfg.parity_top_k)
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"logprobs": refs, "tokenizer": tokenizer}


def evaluate_full_in_subprocess(cfg: EvalConfig, v: Variant, benchmarks: list[Benchmark], budget: Budget,
                                folder: Path, reference: list[dict], tokenizer) -> None:
    """A model with its own weights (the full finetune) in its own vLLM engine, in a child process that has ended
    (and freed the GPUs) before anything else loads."""
    prompts = [think_prompt(tokenizer, it.question) for b in benchmarks for it in b.items]
    request = {"model_path": str(v.run.weights_dir), "tokenizer": str(v.run.weights_dir),
               "sizing": asdict(cfg.engine_sizing(budget)), "prompts": prompts, "budget": asdict(budget),
               "parity": {"prompts": parity_prompts(cfg, tokenizer, benchmarks), "reference": reference,
                          "thresholds": asdict(cfg.parity_thresholds()), "what": f"vllm {v.name}"}}
    result = generate_in_subprocess(request)
    write_json(parity_path(folder, v.name), result["parity"])
    evaluate_variant(ReplayBackend(prompts, result["generations"]), tokenizer, v, None, benchmarks, budget, folder,
                     v.run.identity()["weights_sha256"], cfg.overwrite)


def evaluate_vllm(cfg: EvalConfig, variants: list[Variant], benchmarks: list[Benchmark], budget: Budget,
                  folder: Path) -> None:
    """The PEFT references of every variant to generate, then each full model in its own process, then one
    engine per base model serving its LoRA variants (base, LoRA, ablated copies, extra runs) as LoRA requests; each
    variant's parity numbers are saved beside its generations before it generates."""
    todo = [v for v in variants
            if cfg.overwrite or not all(generations_path(folder, v.name, b.name).is_file() for b in benchmarks)]
    if not todo:
        return
    refs = peft_references(cfg, todo, benchmarks)
    tokenizer, thresholds = refs["tokenizer"], cfg.parity_thresholds()
    for v in (v for v in todo if v.run.kind == "full"):
        evaluate_full_in_subprocess(cfg, v, benchmarks, budget, folder, refs["logprobs"][v.name], tokenizer)
    by_base: dict[str, list[tuple[Variant, str | None]]] = {}
    for v in (v for v in todo if v.run.kind != "full"):
        base, adapter = vllm_weights(v, folder / ".vllm_adapters")
        by_base.setdefault(base, []).append((v, adapter))
    prompts = parity_prompts(cfg, tokenizer, benchmarks)
    for base, served in by_base.items():
        engine = VLLMEngine(base, tokenizer, cfg.engine_sizing(budget, [a for _, a in served if a]))
        for v, adapter in served:
            backend = engine.backend(adapter)
            numbers = check_logprob_parity(FixedLogprobs(refs["logprobs"][v.name]), backend, prompts, thresholds,
                                           what=f"vllm {v.name}")
            write_json(parity_path(folder, v.name), numbers)
            evaluate_variant(backend, tokenizer, v, None, benchmarks, budget, folder,
                             v.run.identity()["weights_sha256"], cfg.overwrite)
        engine.close()


def run_eval_benchmarks(cfg: EvalConfig) -> Path:
    """Generate and grade every (variant, benchmark) not yet done (or regrade them), then write the recovery
    tables, the figure and the metadata; returns ``results/<profile>/eval/<name>``."""
    benchmarks = [load_benchmark(s, cfg.profile, cfg.gpqa_path, cfg.gpqa_seed, cfg.limit) for s in cfg.benchmark_specs]
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
                       for b in benchmarks},
        "parity": saved_parity(folder, variants)})
    for b in benchmarks:
        log.info("%s: %s", b.name, "  ".join(f"{v.name} {100 * summary['accuracy'][v.name][b.name]['value']:.1f}%"
                                             for v in variants))
    log.info("wrote %s", folder)
    return folder
