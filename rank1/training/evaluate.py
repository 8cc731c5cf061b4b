"""Benchmark evaluation of model variants: generate, grade, and keep every generation in a JSONL.

A variant is a run's weights seen one way:

- ``base``: the LoRA run's model with the adapter disabled (``disable_adapter``);
- ``lora``: the rank-1 adapter on;
- ``full``: the full finetune run;
- ``mlp_ablated`` / ``attn_ablated``: the adapter on, with every MLP (gate, up, down) or every
  attention (q, k, v, o) adapter ablated (switched off, or its output zeroed by
  :func:`rank1.hooks.ablate_adapters`; saved weights are never edited);
- any other run (e.g. ``tiny-r1-all-mlp``, trained on a subset of projections) as an extra row.

Each (variant, benchmark) goes to ``generations/<variant>__<benchmark>.jsonl`` once all its items are
done, so a killed evaluation resumes at the next file. Every record holds the generation, its grade,
the budget flags and the weights' hash; ``--regrade`` regrades the files without a model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rank1 import constants as K
from rank1.artifacts import read_json, write_text, write_with
from rank1.benchmarks import Benchmark
from rank1.generate import Backend, Budget, Generation, think_prompt
from rank1.hooks import ablate_adapters, folded_adapters
from rank1.models import resolve_model_source
from rank1.runs import Loaded, Run

log = logging.getLogger(__name__)

PAPER_VARIANTS = ("base", "lora", "full", "mlp_ablated", "attn_ablated")
LORA_MODES = {"base": "adapter_off", "lora": "adapter_on", "mlp_ablated": "ablate_mlp",
              "attn_ablated": "ablate_attn"}


@dataclass(frozen=True)
class Variant:
    """A named way of running ``run``: ``mode`` is adapter_off | adapter_on | ablate_mlp | ablate_attn
    | model (a full finetune, or an extra LoRA run with its adapter on)."""

    name: str
    run: Run
    mode: str


def can_fold(loaded: Loaded) -> bool:
    """Whether :func:`variant_context` folds the adapters into the weights: on CPU with float32 weights
    (there the adapters' extra ops cost about a tenth of a batched decode step; on GPU they are noise,
    and folding into bf16 weights would round the update away)."""
    return (loaded.device.type == "cpu" and bool(loaded.sites)
            and all(s.module.get_base_layer().weight.dtype == torch.float32 for s in loaded.sites))


@contextlib.contextmanager
def variant_context(loaded: Loaded, mode: str, fold: bool | None = None) -> Iterator[None]:
    """The model of ``loaded`` behaves as the variant inside the block. With ``fold`` (default:
    :func:`can_fold`) the active adapters are folded into their weights and the ablated ones switched off
    for the block (:func:`rank1.hooks.folded_adapters`: the same function up to float rounding, restored
    bit for bit on exit); otherwise an ablation zeroes the adapters' output with a hook."""
    fold = can_fold(loaded) if fold is None else fold
    if mode == "adapter_off":
        with loaded.model.disable_adapter():
            yield
    elif mode in ("ablate_mlp", "ablate_attn"):
        sites = [s for s in loaded.sites if s.is_mlp == (mode == "ablate_mlp")]
        if not sites:
            raise ValueError(f"{loaded.run.name} has no {'MLP' if mode == 'ablate_mlp' else 'attention'} "
                             f"adapters to ablate")
        kept = [s for s in loaded.sites if s.is_mlp != (mode == "ablate_mlp")]
        with folded_adapters(kept, sites) if fold else ablate_adapters(sites):
            yield
    elif mode == "adapter_on":
        with folded_adapters(loaded.sites) if fold else contextlib.nullcontext():
            yield
    elif mode == "model":
        yield
    else:
        raise ValueError(f"unknown variant mode {mode!r}")


def generations_path(folder: Path, variant: str, benchmark: str) -> Path:
    return folder / K.GENERATIONS_DIR / f"{variant}__{benchmark}.jsonl"


def parity_path(folder: Path, variant: str) -> Path:
    """Where the parity numbers of a variant served by vLLM are kept (:func:`rank1.serving.parity_numbers`)."""
    return folder / K.GENERATIONS_DIR / f"{variant}__parity.json"


def saved_parity(folder: Path, variants: list[Variant]) -> dict[str, Any]:
    """The parity numbers saved for ``variants`` (those served by vLLM), by variant name."""
    return {v.name: read_json(parity_path(folder, v.name)) for v in variants if parity_path(folder, v.name).is_file()}


def grade_records(bench: Benchmark, gens: list[Generation], variant: Variant, budget: Budget,
                  weights_sha256: str) -> list[dict[str, Any]]:
    """One JSONL record per item: generation, prediction, grade, budget flags, provenance."""
    out = []
    for item, g in zip(bench.items, gens, strict=True):
        pred, ok = bench.grade(g.answer, item.gold)
        out.append({"id": item.id, "benchmark": bench.name, "variant": variant.name, "gold": item.gold,
                    "pred": pred, "correct": bool(ok), **g.to_dict(),
                    "budget": [budget.think_tokens, budget.answer_tokens], "weights_sha256": weights_sha256})
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_generations(path: Path) -> list[dict[str, Any]]:
    """Records of a generations file; a bad line raises a ValueError naming the file and line."""
    records = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                rec["correct"], rec["id"], rec["answer"]  # noqa: B018 (fields every reader needs)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a generation record ({e}); delete the file to "
                                 f"regenerate it") from None
            records.append(rec)
    return records


def check_existing(path: Path, bench: Benchmark, budget: Budget, weights_sha256: str) -> list[dict[str, Any]]:
    """A finished file is reused only if it was made from the same weights, budget and items."""
    records = read_generations(path)
    ids = [r["id"] for r in records]
    why = ("other weights" if any(r.get("weights_sha256") != weights_sha256 for r in records) else
           "another budget" if any(r.get("budget") != [budget.think_tokens, budget.answer_tokens]
                                   for r in records) else
           "other items (--limit or the benchmark changed)" if ids != [it.id for it in bench.items] else None)
    if why:
        raise ValueError(f"{path} was made with {why}; pass --overwrite to regenerate, or --name for a "
                         f"new evaluation folder")
    return records


def evaluate_variant(backend: Backend, tokenizer, variant: Variant, loaded: Loaded | None,
                     benchmarks: list[Benchmark], budget: Budget, folder: Path, weights_sha256: str,
                     overwrite: bool = False) -> dict[str, float]:
    """Generate and grade every benchmark not yet done for ``variant``; returns seconds per benchmark."""
    seconds = {}
    for bench in benchmarks:
        path = generations_path(folder, variant.name, bench.name)
        if path.is_file() and not overwrite:
            check_existing(path, bench, budget, weights_sha256)
            log.info("%s exists; skipping", path.name)
            continue
        prompts = [think_prompt(tokenizer, it.question) for it in bench.items]
        t0 = time.time()
        ctx = variant_context(loaded, variant.mode) if loaded is not None else contextlib.nullcontext()
        with ctx:
            gens = backend.generate(prompts, budget, desc=f"{variant.name} {bench.name}")
        seconds[bench.name] = time.time() - t0
        records = grade_records(bench, gens, variant, budget, weights_sha256)
        write_jsonl(path, records)
        tokens = sum(g.think_tokens + g.answer_tokens for g in gens)
        log.info("%s %s: accuracy %.1f%% (%d items, %d tokens, %.0f tokens/s, thinking budget hit %d)",
                 variant.name, bench.name, 100 * sum(r["correct"] for r in records) / len(records), len(records),
                 tokens, tokens / max(seconds[bench.name], 1e-9), sum(g.think_budget_hit for g in gens))
    return seconds


def regrade_file(path: Path, bench: Benchmark) -> list[dict[str, Any]]:
    """Regrade a generations file with the benchmark's current grader (no model needed)."""
    records = read_generations(path)
    gold = {it.id: it.gold for it in bench.items}
    for r in records:
        r["gold"] = gold.get(r["id"], r["gold"])
        r["pred"], ok = bench.grade(r["answer"], r["gold"])
        r["correct"] = bool(ok)
    write_jsonl(path, records)
    return records


def vllm_weights(variant: Variant, scratch: Path) -> tuple[str, str | None]:
    """(model folder, adapter folder or None) that vLLM serves for ``variant``. An ablated variant
    is served as a copy of the adapter whose ablated ``lora_B`` are zero, written under ``scratch``;
    the parity check against the hook-ablated PEFT model confirms it is the same function."""
    run = variant.run
    if run.kind == "full":
        return str(run.weights_dir), None
    base = resolve_model_source(run.model_id)
    if variant.mode == "adapter_off":
        return base, None
    if variant.mode in ("adapter_on", "model"):
        return base, str(run.weights_dir)
    projections = K.MLP_PROJECTIONS if variant.mode == "ablate_mlp" else K.ATTN_PROJECTIONS
    return base, str(ablated_adapter(run.weights_dir, projections, scratch / variant.name))


def ablated_adapter(adapter_dir: Path, projections: tuple[str, ...], target: Path) -> Path:
    """Write ``target``: a copy of the PEFT adapter folder ``adapter_dir`` whose ``lora_B`` of ``projections`` are
    zero (so those adapters add nothing) and every other tensor the same; written whole or not at all."""
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    zeroed = [k for k in tensors if "lora_B" in k and any(f".{p}." in k for p in projections)]
    if not zeroed:
        raise ValueError(f"{adapter_dir} has no {'/'.join(projections)} adapters to ablate")
    for key in zeroed:
        tensors[key] = torch.zeros_like(tensors[key])

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())

    write_with(target, write)
    return target
