"""Disk, memory and devices of each stage, computed from a profile alone: its stage tables and its ``[plan]``
table of model dimensions, corpus size and hardware (no model is downloaded). Pure functions of the dimensions
first (:func:`kv_cache_bytes`, :func:`checkpoint_bytes`, ...), then one estimate per stage kind, then the tables
:data:`DEVICES`, :data:`DISK`, :data:`STAGE_MEMORY` and :data:`DEVICE_MEMORY` whose keys the stage table in
``run_all.sh`` names."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import huggingface_hub
from huggingface_hub import constants as hf_constants

from rank1.ablation.config import AblationConfig
from rank1.activations.config import ExtractConfig
from rank1.config import REPO_ROOT, Profile, field_default, profile_defaults
from rank1.constants import ENV_LLM_BASE_URL, ENV_LLM_MODEL, PROJECTIONS
from rank1.generate import FORCED_ALLOWANCE
from rank1.interventions.config import RolloutConfig, SteeringConfig
from rank1.sae.config import SaeConfig
from rank1.sae_lora.config import SaeLoraConfig
from rank1.training.config import EvalConfig, TrainConfig

ENV_ENGINE = "ENGINE"  # 0_train_lora.sh: zero3 (DeepSpeed ZeRO-3, its default with more than one GPU) | ddp
ENV_DS_CONFIG = "DS_CONFIG"  # 0_train_lora.sh: the DeepSpeed config (default below)
DS_CONFIG = REPO_ROOT / "configs" / "deepspeed_zero3.json"
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp16": 2, "bf16": 2, "fp32": 4}
MODEL_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")
# [plan]: the model's dimensions and the corpus size, then the hardware the plan assumes: gpus (training GPUs, one
# process each; ZeRO-3 above one, 0 a CPU), gpu_memory_gib (one GPU's memory, what every stage's estimate is checked
# against) and prompt_tokens (an allowance for the prompt in front of each generation)
PLAN_KEYS = (*MODEL_KEYS, "corpus_tokens", "gpus", "gpu_memory_gib", "prompt_tokens")
CHECKPOINTS_KEPT = 2  # save_total_limit of the Trainer (rank1/training/trainer.py): one more while the next is written
HUB_BYTES = 2  # per parameter of a downloaded snapshot (Qwen2.5 and SmolLM2 publish bf16 safetensors)
ID_BYTES = 12  # per token of an activation store: token id, document and position, int32 each
GIB = 1 << 30


class Part(NamedTuple):
    """One line of a disk or memory estimate."""

    what: str
    size: int | None  # bytes; None where the profile does not say
    kept: bool = True  # disk only: False for what exists only while the stage runs (training checkpoints)


Estimate = list[Part]



# ---- sizes: pure functions of the model's dimensions -------------------------------------------------------

def model_params(plan: Mapping) -> int | None:
    """Parameters of a Qwen2-style decoder (biases and norms left out; untied embeddings)."""
    if not all(k in plan for k in MODEL_KEYS):
        return None
    h, i = plan["hidden"], plan["intermediate"]
    kv = h // plan["heads"] * plan["kv_heads"]
    return plan["layers"] * (2 * h * h + 2 * h * kv + 3 * h * i) + 2 * plan["vocab"] * h


def adapter_params(plan: Mapping, rank: int = 1) -> int | None:
    """Parameters of a rank-r LoRA on the 7 projections of every layer: r x (in + out) per projection."""
    if not all(k in plan for k in ("layers", "hidden", "intermediate", "heads", "kv_heads")):
        return None
    h, i = plan["hidden"], plan["intermediate"]
    kv = h // plan["heads"] * plan["kv_heads"]
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)
    return rank * per_layer * plan["layers"]


def store_bytes(tokens: int, sites: int, dtype: str) -> int:
    """Activations of a store: tokens x sites x bytes per value (the ids add ID_BYTES per token)."""
    return tokens * sites * DTYPE_BYTES[dtype]


def kv_cache_bytes(plan: Mapping, tokens: int, batch: int, dtype_bytes: int) -> int | None:
    """KV cache of ``batch`` sequences of ``tokens`` tokens: 2 (K and V) x layers x kv_heads x head_dim x bytes
    x tokens x batch, head_dim = hidden / heads."""
    if not all(k in plan for k in ("layers", "hidden", "heads", "kv_heads")):
        return None
    head_dim = plan["hidden"] // plan["heads"]
    return 2 * plan["layers"] * plan["kv_heads"] * head_dim * dtype_bytes * tokens * batch


def training_state_bytes(frozen: int, trainable: int, dtype_bytes: int, shards: int) -> int:
    """Weights, gradients and optimizer of one training device: the frozen weights at ``dtype_bytes`` plus 16 B
    per trainable parameter (in bf16 under ZeRO-3: weight 2 + gradient 2 + fp32 master 4 + Adam's two fp32 moments
    8; otherwise the fp32 parameter 4 + gradient 4 + moments 8), divided over the ZeRO-3 shards (1 without)."""
    return -(-(dtype_bytes * frozen + 16 * trainable) // shards)


def checkpoint_bytes(params: int, zero3: bool, bf16: bool) -> int:
    """One Trainer checkpoint of ``params`` trained parameters: the weights (bf16 as ZeRO-3 gathers them, else
    the fp32 parameters) and the optimizer (ZeRO-3: fp32 master copies and Adam's two moments, 12 B; otherwise the
    two moments, 8 B)."""
    return params * ((2 if zero3 and bf16 else 4) + (12 if zero3 else 8))


def checkpoints_at_peak(save_steps: int, steps: int) -> int:
    """Checkpoints on disk at once: the Trainer keeps CHECKPOINTS_KEPT and writes the next one before it deletes
    the oldest, so one more; fewer when the run saves fewer times (``steps`` // ``save_steps``; steps <= 0: the
    step count depends on the data, so the most)."""
    if save_steps <= 0:
        return 0
    return CHECKPOINTS_KEPT + 1 if steps <= 0 else min(CHECKPOINTS_KEPT + 1, steps // save_steps)


def activation_parts(plan: Mapping, micro_batch: int, block_size: int, dtype_bytes: int,
                     checkpointing: bool) -> Estimate:
    """Activations of one training micro-batch: what the layers keep for backward (with gradient checkpointing
    each layer's input, tokens x layers x hidden x bytes; without, about 10 x hidden + 4 x intermediate values per
    token and layer: norms, q/k/v, attention output, residuals, gate, up, their activation and product), and the
    logits the loss reads (tokens x vocab x the output's bytes + a float32 copy + a float32 log-softmax; in fp32
    the copy is the output)."""
    tokens, layers, h = micro_batch * block_size, plan["layers"], plan["hidden"]
    logit_bytes = dtype_bytes + 8 if dtype_bytes < 4 else 8
    if checkpointing:
        saved = Part(f"checkpointed layer inputs ({tokens} tokens x {layers} layers x {h} x {dtype_bytes} B)",
                     tokens * layers * h * dtype_bytes)
    else:
        width = 10 * h + 4 * plan["intermediate"]
        saved = Part(f"activations kept for backward, no gradient checkpointing ({tokens} tokens x {layers} layers "
                     f"x (10 x {h} + 4 x {plan['intermediate']}) x {dtype_bytes} B)",
                     tokens * layers * width * dtype_bytes)
    return [saved, Part(f"logits of a micro-batch ({tokens} tokens x {plan['vocab']} x {logit_bytes} B: output, "
                        f"float32 copy, log-softmax)", tokens * plan["vocab"] * logit_bytes)]


def forward_bytes(plan: Mapping, tokens: int, dtype_bytes: int, logits: bool = False) -> int:
    """Working set of one forward pass over ``tokens`` tokens without gradients: the widest layer's (gate, up and
    their product, 3 x intermediate; residual, normed input, attention output and the projection being computed,
    4 x hidden) and, where the LM head runs, the logits (vocab), all at the compute dtype."""
    width = 3 * plan["intermediate"] + 4 * plan["hidden"] + (plan["vocab"] if logits else 0)
    return tokens * width * dtype_bytes


def sae_training_bytes(d_in: int, d_sae: int, batch: int) -> int:
    """An SAE trained in fp32 with Adam: 16 B per parameter (weight, gradient, two moments) of W_enc and W_dec
    (d_in x d_sae each) and both biases, plus one batch's pre-activations and activations (2 x batch x d_sae x 4 B)."""
    return 16 * (2 * d_in * d_sae + d_sae + d_in) + 2 * batch * d_sae * 4


# ---- sizes from the profile ------------------------------------------------------------------------------

def looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".jsonl", ".parquet", ".json", ".csv"))

def is_hub_id(value: str) -> bool:
    return bool(value) and not looks_local(value) and value != "synthetic" and not value.startswith(
        ("gguf:", "random-"))

def fill_size(value: str, profile: Profile, table: Mapping) -> str:
    size = table.get("model_size") or profile.section("train").get("model_size")
    return value.replace("{size}", str(size)) if size else value

def has_model_files(folder: Path) -> bool:
    """A Hugging Face model folder: config.json and every weight file its index names (or one weights file)."""
    index = folder / "model.safetensors.index.json"
    if not (folder / "config.json").is_file():
        return False
    if index.is_file():
        return all((folder / f).is_file() for f in set(json.loads(index.read_text())["weight_map"].values()))
    return (folder / "model.safetensors").is_file() or any(folder.glob("*.bin"))


def in_hub_cache(repo_id: str, repo_type: str) -> bool:
    """The Hugging Face cache holds ``repo_id`` (a model: its config and every weight file)."""
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, repo_type=repo_type, local_files_only=True,
                                                        cache_dir=hf_constants.HF_HUB_CACHE))
    except (OSError, ValueError):
        return False
    return has_model_files(folder) if repo_type == "model" else any(folder.iterdir())



def plan_values(profile: Profile) -> dict[str, int]:
    """The profile's ``[plan]`` table: model dimensions, corpus size and hardware (for estimates only)."""
    plan = profile.section("plan")
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"profile {profile.path}: [plan] has unknown keys {unknown}; known: {list(PLAN_KEYS)}")
    return {k: int(v) for k, v in plan.items()}


def stage_values(profile: Profile, cls: type, section: str | tuple[str, ...]) -> dict:
    """A stage config's resolved values (dataclass defaults < profile), without building the config."""
    values = {f.name: field_default(f) for f in dataclasses.fields(cls)}
    values.update(profile_defaults(cls, profile, section))
    return values


def planned_tokens(extract: Mapping, plan: Mapping) -> int | None:
    """Tokens an extraction reads: the smallest of max_tokens, max_docs x block_size and the corpus size
    (the ones that are set); None when none is."""
    bounds = [extract.get("max_tokens") or 0,
              (extract.get("max_docs") or 0) * (extract.get("block_size") or 0), plan.get("corpus_tokens") or 0]
    bounds = [b for b in bounds if b > 0]
    return min(bounds) if bounds else None


def zero3_shards(plan: Mapping, env: Mapping[str, str] = os.environ) -> int:
    """ZeRO-3 shards of training as 0_train_lora.sh runs it on [plan] gpus: ENGINE, else ZeRO-3 with more than
    one GPU; 1 without ZeRO-3."""
    gpus = plan.get("gpus", 0)
    engine = env.get(ENV_ENGINE) or ("zero3" if gpus > 1 else "ddp")
    return gpus if engine == "zero3" and gpus > 1 else 1


def compute_bytes(precision: str, plan: Mapping) -> int:
    """Bytes per weight of a stage's precision; auto is bf16 on the plan's GPUs ([plan] gpus > 0), else fp32."""
    if precision == "auto":
        return 2 if plan.get("gpus", 0) > 0 else 4
    return DTYPE_BYTES[precision]


def _weights(plan: Mapping, nbytes: int, what: str = "weights") -> Part:
    n = model_params(plan)
    return Part(f"{what} ({n} parameters x {nbytes} B)", None if n is None else n * nbytes)


def _store_estimate(profile: Profile, mlp: bool) -> Estimate:
    plan = plan_values(profile)
    ex = stage_values(profile, ExtractConfig, "extract")
    tokens, layers = planned_tokens(ex, plan), plan.get("layers")
    per_layer = (ex["neurons_per_layer"] or len(PROJECTIONS)) if mlp else len(PROJECTIONS)
    what = f"{'MLP-neuron' if mlp else 'adapter'} store ({tokens} tokens x ({layers} layers x {per_layer} sites " \
           f"x {DTYPE_BYTES[ex['dtype']]} B {ex['dtype']} + {ID_BYTES} B of ids))"
    if tokens is None or layers is None:
        return [Part(what, None)]
    return [Part(what, store_bytes(tokens, layers * per_layer, ex["dtype"]) + tokens * ID_BYTES)]


def _download_estimate(profile: Profile, plan: Mapping) -> Estimate:
    """The base model's download, where the profile names a hub id that is not in the Hugging Face cache."""
    model = fill_size(profile.common("model") or "", profile, {})
    if not is_hub_id(model) or in_hub_cache(model, "model"):
        return []
    n = model_params(plan)
    return [Part(f"base model download into the Hugging Face cache ({n} parameters x {HUB_BYTES} B)",
                 None if n is None else n * HUB_BYTES)]


def _training_disk(profile: Profile, full: bool) -> Estimate:
    """The run's final weights, the Trainer's checkpoints (kept only with keep_checkpoints) and, before the first
    run, the base model's download."""
    plan, tr = plan_values(profile), stage_values(profile, TrainConfig, "train")
    zero3, bf16 = zero3_shards(plan) > 1, compute_bytes(tr["precision"], plan) == 2
    n = model_params(plan) if full else adapter_params(plan, tr["rank"])
    w = 2 if zero3 and bf16 else 4
    parts = [] if full else _download_estimate(profile, plan)
    parts.append(Part(f"{'full-finetune model' if full else 'adapter'} ({n} parameters x {w} B)",
                      None if n is None else n * w))
    steps = tr["full_max_steps"] if full and tr["full_max_steps"] > 0 else tr["max_steps"]
    peak = checkpoints_at_peak(tr["save_steps"], steps)
    if peak:
        each = None if n is None else checkpoint_bytes(n, zero3, bf16)
        optimizer = "fp32 master + Adam 12 B (ZeRO-3)" if zero3 else "Adam 8 B"

        def what(k: int) -> str:
            return f"{k} checkpoint{'s' if k > 1 else ''}, {human_bytes(each)} each ({n} x ({w} B weights + " \
                   f"{optimizer}))"
        kept = min(CHECKPOINTS_KEPT, peak) if tr["keep_checkpoints"] else 0
        if kept:
            parts.append(Part(f"{what(kept)}, kept after the run (keep_checkpoints)", each and kept * each))
        if peak > kept:
            parts.append(Part(f"{what(peak - kept)}, while training only", each and (peak - kept) * each, kept=False))
    return parts


def _sae_estimate(profile: Profile) -> Estimate:
    layers = plan_values(profile).get("layers")
    expansion = stage_values(profile, SaeConfig, "sae")["expansion"]
    if layers is None:
        return [Part("SAE weights", None)]
    d_in = layers * len(PROJECTIONS)
    d_sae = expansion * d_in
    return [Part(f"SAE weights ({d_in} -> {d_sae} latents, fp32)", 4 * (2 * d_in * d_sae + d_sae + d_in))]


def _resid_store_estimate(profile: Profile) -> Estimate:
    hidden = plan_values(profile).get("hidden")
    v = stage_values(profile, SaeLoraConfig, "sae_lora")
    if v["sae"]:
        return [Part("residual store: none (an existing SAE is loaded)", 0)]
    tokens, d_sae = v["store_tokens"], None if hidden is None else v["expansion"] * hidden
    return [Part(f"residual store of stage 5 ({tokens} tokens x ({hidden} x 4 B float32 + {ID_BYTES} B of ids))",
                 None if hidden is None else store_bytes(tokens, hidden, "float32") + tokens * ID_BYTES),
            Part(f"residual SAE weights ({hidden} -> {d_sae} latents, fp32)",
                 None if hidden is None else 4 * (2 * hidden * d_sae + d_sae + hidden))]


# ---- memory per device -----------------------------------------------------------------------------------

def _train_memory(profile: Profile, full: bool) -> Estimate:
    plan, tr = plan_values(profile), stage_values(profile, TrainConfig, "train")
    if not all(k in plan for k in MODEL_KEYS):
        return [Part("training state ([plan] lacks the model's dimensions)", None)]
    b, shards = compute_bytes(tr["precision"], plan), zero3_shards(plan)
    n, lora = model_params(plan), adapter_params(plan, tr["rank"])
    over = f", over {shards} ZeRO-3 shards" if shards > 1 else ""
    what = (f"weights, gradients and Adam state ({n} x 16 B{over})" if full else
            f"weights and the adapter's training state ({n} x {b} B + {lora} x 16 B{over})")
    state = training_state_bytes(0 if full else n, n if full else lora, b, shards)
    return [Part(what, state), *activation_parts(plan, tr["micro_batch"], tr["block_size"], b,
                                                 tr["gradient_checkpointing"])]


def _generation_memory(plan: Mapping, precision: str, batch: int, think: int, answer: int,
                       backend: str = "hf", vllm_share: float = 0.9, tensor_parallel: int = 1,
                       prompt_tokens: int | None = None) -> Estimate:
    """The weights and the KV cache of ``batch`` sequences of prompt + think + answer tokens (``hf``: the cache is
    allocated whole per batch); under vLLM its share of each GPU instead (:func:`vllm_plan`)."""
    b = compute_bytes(precision, plan)
    if backend == "vllm" and plan.get("gpu_memory_gib"):
        return [vllm_plan(plan, b, batch, think, answer, vllm_share, tensor_parallel,
                          plan.get("prompt_tokens", 0) if prompt_tokens is None else prompt_tokens)]
    tokens = plan.get("prompt_tokens", 0) + think + answer
    kv = kv_cache_bytes(plan, tokens, batch, b)
    head_dim = plan.get("hidden", 0) // plan.get("heads", 1)
    what = (f"KV cache ({batch} sequences x {tokens} tokens (prompt allowance + {think} + {answer}) x 2 x "
            f"{plan.get('layers')} layers x {plan.get('kv_heads')} kv heads x {head_dim} x {b} B)")
    return [_weights(plan, b), Part(what, kv)]


def vllm_plan(plan: Mapping, dtype_bytes: int, batch: int, think: int, answer: int, share: float,
              tensor_parallel: int, prompt_tokens: int) -> Part:
    """vLLM's share of each of ``tensor_parallel`` GPUs: its slice of the weights and a paged KV cache in the rest.
    Each GPU holds ceil(kv_heads / tp) KV heads of every position (vLLM replicates KV heads when tp exceeds them);
    the text says how many whole sequences of the context length (:func:`rank1.serving.context_length`) fit at once,
    the rest of a batch waits its turn."""
    gpu = plan["gpu_memory_gib"] * GIB
    own = int(share * gpu)
    context = prompt_tokens + think + FORCED_ALLOWANCE + answer
    params = model_params(plan)
    per_token = kv_cache_bytes(plan, 1, 1, dtype_bytes)
    if params is None or per_token is None:
        return Part(f"vLLM's share of each of {tensor_parallel} GPUs ({share} x {plan['gpu_memory_gib']} GiB; "
                    f"[plan] lacks the model's dimensions for its KV cache)", own)
    weights = params * dtype_bytes // tensor_parallel
    kv_heads = -(-plan["kv_heads"] // tensor_parallel)
    per_token_gpu = per_token * kv_heads // plan["kv_heads"]
    room = max(own - weights, 0)
    fits = room // (per_token_gpu * context)
    if fits < 1:  # the GPU memory at which this share would hold one sequence: over the GPU, so the plan flags it
        own = int((weights + per_token_gpu * context) / share) + 1
    return Part(f"vLLM on {tensor_parallel} GPUs (tensor parallel {tensor_parallel}), per GPU {share} x "
                f"{plan['gpu_memory_gib']} GiB: {human_bytes(weights)} of weights and {human_bytes(room)} of paged KV "
                f"cache at {per_token_gpu // 1024} KiB per token ({kv_heads} of {plan['kv_heads']} kv heads): "
                f"{fits} sequences of {context} tokens decode at once" + (
                    f" (batches of {batch}: {batch - fits} wait their turn)" if fits < batch else ""), own)


def _eval_memory(profile: Profile) -> Estimate:
    v = stage_values(profile, EvalConfig, "eval")
    return _generation_memory(plan_values(profile), v["precision"], v["batch_size"], v["think_tokens"],
                              v["answer_tokens"], v["backend"], v["gpu_memory_utilization"], v["tensor_parallel_size"],
                              v["prompt_tokens"])


def _forward_part(plan: Mapping, sequences: int, tokens: int, dtype_bytes: int, logits: bool = False) -> Part:
    if not all(k in plan for k in MODEL_KEYS):
        return Part("a forward pass ([plan] lacks the model's dimensions)", None)
    width = f"3 x {plan['intermediate']} + 4 x {plan['hidden']}" + (f" + {plan['vocab']} logits" if logits else "")
    batch = f"{sequences} sequences x {tokens} tokens" if sequences > 1 else f"{tokens} tokens"
    return Part(f"a forward pass ({batch} x ({width}) x {dtype_bytes} B)",
                forward_bytes(plan, sequences * tokens, dtype_bytes, logits))


def _largest_phase(phases: Mapping[str, Estimate]) -> Estimate:
    """The parts of the phase that holds the most at once (a stage's phases run one after another)."""
    name, parts = max(phases.items(), key=lambda kv: sum(p.size or 0 for p in kv[1]))
    return [Part(f"{name}: {p.what}", p.size) for p in parts]


def _steering_memory(profile: Profile) -> Estimate:
    """Generation, then the teacher-forced KL: each batch twice (unsteered and steered) with every position's
    logits."""
    plan, v = plan_values(profile), stage_values(profile, SteeringConfig, "steering")
    b = compute_bytes(v["precision"], plan)
    tokens = plan.get("prompt_tokens", 0) + v["think_tokens"] + v["answer_tokens"]
    return _largest_phase({
        "generation": _generation_memory(plan, v["precision"], v["batch_size"], v["think_tokens"], v["answer_tokens"]),
        "teacher-forced KL": [_weights(plan, b), _forward_part(plan, 2 * v["batch_size"], tokens, b, logits=True)]})


def _rollouts_memory(profile: Profile) -> Estimate:
    """Sampling, then reading the adapter (and MLP) activations of read_batch whole rollouts at a time."""
    plan, v = plan_values(profile), stage_values(profile, RolloutConfig, "rollouts")
    b = compute_bytes(v["precision"], plan)
    tokens = plan.get("prompt_tokens", 0) + v["think_tokens"] + v["answer_tokens"]
    return _largest_phase({
        "sampling": _generation_memory(plan, v["precision"], v["batch_size"], v["think_tokens"], v["answer_tokens"],
                                       v["backend"], v["gpu_memory_utilization"], v["tensor_parallel_size"],
                                       v["prompt_tokens"]),
        "reading activations": [_weights(plan, b), _forward_part(plan, v["read_batch"] or v["batch_size"], tokens,
                                                                 b)]})


def _extract_memory(profile: Profile, mlp: bool) -> Estimate:
    plan, ex = plan_values(profile), stage_values(profile, ExtractConfig, "extract")
    if not all(k in plan for k in MODEL_KEYS):
        return [Part("weights and a batch ([plan] lacks the model's dimensions)", None)]
    b = compute_bytes(ex["precision"], plan)
    sites = plan["layers"] * ((ex["neurons_per_layer"] or len(PROJECTIONS)) if mlp else len(PROJECTIONS))
    return [_weights(plan, b, "weights, per worker"), _forward_part(plan, 1, ex["batch_tokens"], b),
            Part(f"the captured sites ({ex['batch_tokens']} tokens x {sites} sites x 4 B float32)",
                 ex["batch_tokens"] * sites * 4)]


def _ablation_memory(profile: Profile) -> Estimate:
    plan, v = plan_values(profile), stage_values(profile, AblationConfig, "ablation")
    chunk, vocab = v["token_chunk"], plan.get("vocab")
    return [_weights(plan, compute_bytes(v["precision"], plan)),
            Part(f"cached prefix (cache_limit_mb = {v['cache_limit_mb']:g})", int(v["cache_limit_mb"] * (1 << 20))),
            Part(f"float64 log-probs of a chunk, reference and ablated (2 x {chunk} positions x {vocab} x 8 B)",
                 None if vocab is None else 2 * chunk * vocab * 8)]


def _sae_memory(profile: Profile) -> Estimate:
    plan, v = plan_values(profile), stage_values(profile, SaeConfig, "sae")
    if "layers" not in plan:
        return [Part("SAE training ([plan] lacks layers)", None)]
    d_in = plan["layers"] * len(PROJECTIONS)
    d_sae = v["expansion"] * d_in
    sae = Part(f"SAE training ({d_in} -> {d_sae}, fp32 + Adam, batch {v['batch_size']})",
               sae_training_bytes(d_in, d_sae, v["batch_size"]))
    return [_weights(plan, compute_bytes(v["precision"], plan)), sae] if v["loss_gap"] else [sae]


def _resid_sae_memory(profile: Profile) -> Estimate:
    plan, v = plan_values(profile), stage_values(profile, SaeLoraConfig, "sae_lora")
    if "hidden" not in plan:
        return [Part("weights and SAE training ([plan] lacks hidden)", None)]
    d_sae = v["expansion"] * plan["hidden"]
    return [_weights(plan, compute_bytes(v.get("precision", "auto"), plan)),
            Part(f"residual SAE training ({plan['hidden']} -> {d_sae}, fp32 + Adam, batch {v['sae_batch']})",
                 sae_training_bytes(plan["hidden"], d_sae, v["sae_batch"]))]


def _model_memory(profile: Profile) -> Estimate:
    plan = plan_values(profile)
    return [_weights(plan, compute_bytes("auto", plan))]


def memory_device(profile: Profile) -> str:
    """What a memory estimate is per: a GPU on a GPU plan ([plan] gpus > 0), else the host."""
    return "per GPU" if plan_values(profile).get("gpus", 0) > 0 else "host RAM"


# ---- devices --------------------------------------------------------------------------------------------

MODEL = "the model: one GPU where there is one (bf16), else CPU (fp32)"
ARTIFACTS = "CPU (reads saved artifacts)"


def _train_devices(profile: Profile) -> str:
    gpus, shards = plan_values(profile).get("gpus", 0), zero3_shards(plan_values(profile))
    planned = (f"{gpus} GPUs ([plan] gpus; {'DeepSpeed ZeRO-3' if shards > 1 else 'torch DDP'})" if gpus > 1 else
               "one GPU ([plan] gpus)" if gpus == 1 else "one CPU process ([plan] gpus = 0)")
    return f"{planned}; at run time all visible GPUs (NPROC; ZeRO-3 with more than one, ENGINE), else one CPU process"


def _extract_devices(profile: Profile) -> str:
    n = stage_values(profile, ExtractConfig, "extract")["num_gpus"]
    return f"{n} GPU workers (num_gpus)" if n else MODEL


def _vllm_devices(v: Mapping, what: str) -> str:
    tp = v["tensor_parallel_size"]
    return f"{tp} GPU{'s' if tp > 1 else ''} through vLLM (tensor parallel {tp}): {what}"


def _eval_devices(profile: Profile) -> str:
    v = stage_values(profile, EvalConfig, "eval")
    if v["backend"] != "vllm":
        return MODEL + "; --backend vllm on GPUs"
    return _vllm_devices(v, "one engine serves base, LoRA and ablated variants, the full finetune its own in a "
                            "child process; the PEFT model first, for the parity check")


def _rollouts_devices(profile: Profile) -> str:
    v = stage_values(profile, RolloutConfig, "rollouts")
    if v["backend"] != "vllm":
        return MODEL
    return _vllm_devices(v, "the adapter as a LoRA request, after the parity check; then " + MODEL.removeprefix(
        "the model: ") + " reads the activations")


def _llm_devices(section: tuple[str, ...]) -> Callable[[Profile], str]:
    def devices(profile: Profile) -> str:
        values = {}
        for s in section:
            values.update(profile.section(s))
        if "llm" not in {values.get(k) for k in ("explainer", "scorer", "categoriser")}:
            return "CPU (lexicon explainer, offline scorer)"
        url = values.get("llm_base_url") or os.environ.get(ENV_LLM_BASE_URL) or "(unset)"
        return f"an LLM endpoint: {url}, model {values.get('llm_model') or os.environ.get(ENV_LLM_MODEL)}"
    return devices


# ---- the stages, in the paper's order -------------------------------------------------------------------

LLM_2 = _llm_devices(("autointerp",))
LLM_3 = _llm_devices(("autointerp", "sae_autointerp"))

# What the dry run says of a stage, by the keys of run_all.sh's devices and disk columns.
DEVICES: dict[str, str | Callable[[Profile], str]] = {
    "train": _train_devices,
    "eval": _eval_devices,
    "rollouts": _rollouts_devices,
    "extract": _extract_devices,
    "model": MODEL,
    "artifacts": ARTIFACTS,
    "weights": ARTIFACTS + " and the adapter weights",
    "llm2": LLM_2,
    "llm3": LLM_3,
    "sae": MODEL + "; the SAE on the same device",
    "behaviour": "CPU (or an LLM endpoint with --data_source llm)",
}
DISK: dict[str, Callable[[Profile], Estimate] | None] = {
    "-": None,
    "adapter": lambda p: _training_disk(p, full=False),
    "full": lambda p: _training_disk(p, full=True),
    "store": lambda p: _store_estimate(p, mlp=False),
    "mlp_store": lambda p: _store_estimate(p, mlp=True),
    "sae": _sae_estimate,
    "resid_store": _resid_store_estimate,
}
# The memory of a stage: by its name where its working set beyond the weights matters, else by its devices key.
STAGE_MEMORY: dict[str, Callable[[Profile], Estimate]] = {
    "0.0 train LoRA": lambda p: _train_memory(p, full=False),
    "0.1 train full": lambda p: _train_memory(p, full=True),
    "eval_benchmarks": _eval_memory,
    "1.0_generate_ablation_data": _ablation_memory,
    "iterative_mlp_ablation_by_matrix": _ablation_memory,
    "2.0_extract_lora_activations": lambda p: _extract_memory(p, mlp=False),
    "2.4_extract_mlp_activations": lambda p: _extract_memory(p, mlp=True),
    "3.0_train_sae": _sae_memory,
    "4.0_steering": _steering_memory,
    "4.2_counterfactual_rollouts": _rollouts_memory,
    "5.1_train_residual_sae": _resid_sae_memory,
}
DEVICE_MEMORY: dict[str, Callable[[Profile], Estimate]] = {"model": _model_memory, "sae": _model_memory}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable

