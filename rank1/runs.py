"""A run: what every stage after training loads ("base model + this adapter, or this full finetune").

Resolve one with :func:`resolve_run` from

- nothing: the newest finished run of the profile (``s1_peft/ckpts_lora/<run>``, or ``ckpts_full``);
- a run name (``tiny-r1-all``) or a run folder (``s1_peft/ckpts_lora/tiny-r1-all``);
- ``adapter=DIR``: any PEFT adapter folder made elsewhere (``adapter_config.json`` +
  ``adapter_model.safetensors``), checked against the base model it will be put on.

Load it with :meth:`Run.load` on CPU or GPU in the precision the device supports. Every artifact a
later stage writes records :meth:`Run.identity`: the base model id and a hash of it and the trained weight
tensors (nothing else: the same weights saved elsewhere are the same run), so a stage can tell that its
inputs came from another checkpoint (:func:`check_same_identity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rank1 import constants as K
from rank1.artifacts import read_json, write_json
from rank1.config import load_profile, option, run_dir, runs_dir
from rank1.lora import SAVED_KEY_RE, AdapterSite, adapter_sites
from rank1.models import load_model, load_tokenizer, model_config, resolve_model_source

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
HASH_CACHE = ".weights_sha256.json"  # beside the weights: sizes, mtimes and the tensor hash they gave
HASH_SCHEME = "tensors-v1"  # what the cached hash covers (a cache of another scheme is recomputed)


class RunError(ValueError):
    """A run or adapter that cannot be used as asked (the message says why and what to do)."""


def use_bf16(precision: str) -> bool:
    """Whether to compute in bf16: as asked, or with ``auto`` on a GPU with bf16 units. On a CPU
    ``auto`` is fp32: bf16 autocast there is emulated or, even with avx512_bf16, slower than fp32
    (full finetune of SmolLM2 on 2 cores: about 115 s vs. 75 s per step)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def device_and_dtype(precision: str = "auto") -> tuple[torch.device, torch.dtype, bool]:
    """(device, weight dtype, autocast-to-bf16): bf16 weights on a GPU; on a CPU the weights stay
    fp32 and bf16 (when asked for) runs under autocast."""
    bf16 = use_bf16(precision)
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if bf16 else torch.float32, False
    return torch.device("cpu"), torch.float32, bf16


def latest_run(profile: str, full: bool = False) -> Path:
    """The most recently finished run of ``profile`` (what later stages read by default)."""
    finished = [p.parent for p in runs_dir(full).glob(f"*/{K.CONFIG_JSON}")
                if read_json(p).get("profile") == profile
                and (p.parent / (K.FULL_MODEL_DIR if full else K.ADAPTER_DIR)).is_dir()]
    if not finished:
        raise FileNotFoundError(f"no finished {'full' if full else 'LoRA'} run of profile {profile!r} "
                                f"under {runs_dir(full)}: train one with "
                                f"`bash 0_train_lora.sh --profile {profile}{' --full' if full else ''}`")
    return max(finished, key=lambda p: (p / K.CONFIG_JSON).stat().st_mtime)


def weights_sha256(folder: Path, base_model: str) -> str:
    """The digest of a run's identity: sha256 of its base model id and :func:`tensors_sha256` of the weights in
    ``folder``. Nothing else counts: bit-identical weights on the same base model have the same digest wherever
    and however they were saved."""
    digest = tensors_sha256(folder)
    return hashlib.sha256(json.dumps({"base_model": str(base_model), "tensors_sha256": digest},
                                     sort_keys=True).encode()).hexdigest()


def tensors_sha256(folder: Path) -> str:
    """sha256 over the tensors of the safetensors files in ``folder``: for each tensor, by sorted name, its name,
    dtype, shape and data bytes. Independent of file names and sharding, of the safetensors ``__metadata__`` and
    of the other files (``adapter_config.json`` lists PEFT's target modules in an order that varies between
    processes; ``training_args.bin`` holds the output path). Cached beside them, keyed by each file's size and
    mtime, so a 64 GB full finetune is hashed once."""
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise RunError(f"{folder} holds no weight files (*.safetensors)")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = folder / HASH_CACHE
    if cache.is_file():
        try:  # a damaged cache is recomputed
            cached = json.loads(cache.read_text())
            if cached.get("scheme") == HASH_SCHEME and cached.get("files") == stamp:
                return cached["sha256"]
        except (ValueError, KeyError, AttributeError):
            pass
    tensors = {}  # name -> (file, offset of the data, header entry)
    for p in files:
        data_start, header = _safetensors_header(p)
        tensors.update({name: (p, data_start, entry) for name, entry in header.items()})
    h = hashlib.sha256()
    for name in sorted(tensors):
        path, data_start, entry = tensors[name]
        begin, end = entry["data_offsets"]
        h.update(json.dumps([name, entry["dtype"], entry["shape"], end - begin]).encode() + b"\0")
        with path.open("rb") as f:
            f.seek(data_start + begin)
            left = end - begin
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    raise RunError(f"{path} is truncated: tensor {name!r} ends past the end of the file")
                h.update(chunk)
                left -= len(chunk)
    digest = h.hexdigest()
    try:
        write_json(cache, {"scheme": HASH_SCHEME, "files": stamp, "sha256": digest})
    except OSError:  # a read-only run folder still has an identity
        pass
    return digest


def _safetensors_header(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """(offset of the data, {tensor name: {dtype, shape, data_offsets}}) from a safetensors file's header."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 2 <= n <= path.stat().st_size - 8 else None
        header.pop("__metadata__", None)
        if not all({"dtype", "shape", "data_offsets"} <= set(e) for e in header.values()):
            raise ValueError
    except (ValueError, AttributeError, TypeError):
        raise RunError(f"{path} is not a readable safetensors file (damaged or cut short); copy or retrain the "
                       f"run") from None
    return 8 + n, header


def check_adapter_folder(folder: Path, model_id: str | None = None, require_rank: int | None = 1) -> dict:
    """Check a PEFT adapter folder: files present, LoRA, RSLoRA, rank ``require_rank`` (None: any),
    and, if ``model_id`` is given, that it was trained on that base model (same name, or same
    layer count and projection shapes). Returns its ``adapter_config.json``; raises RunError."""
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise RunError(f"{folder} is not a PEFT adapter folder: {p.name} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{cfg_path} is not valid JSON ({e.msg})") from None
    if cfg.get("peft_type") != "LORA":
        raise RunError(f"{folder}: peft_type is {cfg.get('peft_type')!r}, expected 'LORA'")
    if require_rank is not None and cfg.get("r") != require_rank:
        raise RunError(f"{folder}: the adapter has rank {cfg.get('r')}, this stage needs rank {require_rank} "
                       f"(one scalar activation per adapter)")
    if not cfg.get("use_rslora"):
        raise RunError(f"{folder}: use_rslora is false; the paper's adapters use RSLoRA "
                       f"(scale alpha/sqrt(r)); retrain with 0_train_lora.sh")
    if model_id is not None:
        _check_base_model(folder, cfg, model_id)
    return cfg


def _check_base_model(folder: Path, cfg: dict, model_id: str) -> None:
    """Names first (hub id vs. downloaded folder of the same name is fine), then tensor shapes."""
    saved = str(cfg.get("base_model_name_or_path") or "")
    source = resolve_model_source(model_id)
    if saved and Path(saved).name.lower() not in (Path(model_id).name.lower(), Path(source).name.lower()):
        raise RunError(f"{folder} was trained on base model {saved!r}, but the model given is {model_id!r}; "
                       f"pass the matching --model (or --profile), or another adapter")
    shapes = _adapter_shapes(folder / "adapter_model.safetensors")
    expected = _projection_shapes(model_id)
    if expected is None:
        return
    n_layers, dims = expected
    for (layer, proj, ab), shape in shapes.items():
        if layer >= n_layers:
            raise RunError(f"{folder} adapts layer {layer}, but {model_id!r} has {n_layers} layers: "
                           f"it was trained on another base model")
        d_in, d_out = dims[proj]
        if (ab == "A" and shape[1] != d_in) or (ab == "B" and shape[0] != d_out):
            raise RunError(f"{folder}: layer {layer} {proj} lora_{ab} has shape {tuple(shape)}, which does "
                           f"not fit {model_id!r} ({proj}: {d_in} -> {d_out}): another base model")


def _adapter_shapes(path: Path) -> dict[tuple[int, str, str], list[int]]:

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            m = SAVED_KEY_RE.search(key)
            if m:
                out[(int(m.group(1)), m.group(2), m.group(3))] = list(f.get_slice(key).get_shape())
    if not out:
        raise RunError(f"{path} holds no lora_A/lora_B tensors of decoder layers")
    return out


def _projection_shapes(model_id: str) -> tuple[int, dict[str, tuple[int, int]]] | None:
    """(layers, {projection: (in, out)}) from the model's config, without loading weights."""
    try:
        c = model_config(model_id)
    except OSError:
        return None  # names already matched; shapes are checked again when PEFT loads it
    head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    h, m, q = c.hidden_size, c.intermediate_size, c.num_attention_heads * head
    return c.num_hidden_layers, {"q_proj": (h, q), "k_proj": (h, kv * head), "v_proj": (h, kv * head),
                                 "o_proj": (q, h), "gate_proj": (h, m), "up_proj": (h, m),
                                 "down_proj": (m, h)}


@dataclass
class Loaded:
    """A loaded run: the model (a PeftModel for LoRA runs), its tokenizer, and how it computes."""

    run: Run
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    autocast_bf16: bool

    @property
    def sites(self) -> list[AdapterSite]:
        """The adapters, ordered by (layer, projection); empty for a full finetune."""
        return adapter_sites(self.model) if self.run.kind == "lora" else []

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16)


@dataclass
class Run:
    """A trained run (LoRA adapter or full finetune) on a base model."""

    kind: str  # "lora" | "full"
    model_id: str  # the base model (hub id, local folder, gguf:<package>, random-qwen2)
    weights_dir: Path  # adapter folder, or full-model folder
    folder: Path | None = None  # the run folder, if the weights came from one
    config: dict[str, Any] = field(default_factory=dict)  # the run folder's config.json

    @property
    def name(self) -> str:
        return self.folder.name if self.folder else self.weights_dir.name

    @property
    def adapter_config(self) -> dict[str, Any]:
        return json.loads((self.weights_dir / "adapter_config.json").read_text()) if self.kind == "lora" else {}

    @property
    def rank(self) -> int | None:
        return self.adapter_config.get("r") if self.kind == "lora" else None

    def identity(self) -> dict[str, Any]:
        """What artifacts record about their inputs. Two runs are the same when ``base_model`` and
        ``weights_sha256`` (the base model and the weight tensors, see :func:`weights_sha256`) are equal; ``run``
        and ``weights`` (its name and folder) only say where it was found."""
        return {"run": self.name, "kind": self.kind, "base_model": self.model_id,
                "weights": str(self.weights_dir), "weights_sha256": weights_sha256(self.weights_dir, self.model_id)}

    def load(self, precision: str = "auto", device_map: str | dict | None = None) -> Loaded:
        """Base model + adapter (PEFT, unmerged, so hooks and ``disable_adapter`` work), or the full
        finetune, on the GPU when there is one. ``device_map='auto'`` spreads a large model over GPUs;
        ``{"": "cuda"}`` loads the weights straight onto the GPU, without a copy of the model in host RAM."""
        device, dtype, autocast = device_and_dtype(precision)
        kwargs = {"device_map": device_map} if device_map else {}
        tokenizer = load_tokenizer(self.model_id)
        if self.kind == "full":
            model = load_model(str(self.weights_dir), dtype=dtype, **kwargs)
        else:
            from peft import PeftModel
            model = PeftModel.from_pretrained(load_model(self.model_id, dtype=dtype, **kwargs), self.weights_dir)
        if not isinstance(device_map, str):  # a no-op for weights loaded onto the device already
            model = model.to(device)
        model.eval()
        log.info("loaded %s (%s on %s, %s%s)", self.name, self.kind, device, dtype,
                 ", bf16 autocast" if autocast else "")
        return Loaded(self, model, tokenizer, device, autocast)


def run_from_folder(folder: Path, model_id: str | None = None, require_rank: int | None = 1) -> Run:
    """A run folder written by the training stage (``config.json`` + ``adapter/`` or ``model/``)."""
    cfg_path = folder / K.CONFIG_JSON
    if not cfg_path.is_file():
        raise RunError(f"{folder} holds no finished run ({K.CONFIG_JSON} missing): train it with "
                       f"`bash 0_train_lora.sh`, or pass --adapter DIR for an adapter made elsewhere")
    config = read_json(cfg_path)
    trained_on = config.get("model_id")
    if model_id is not None and trained_on not in (None, model_id):
        raise RunError(f"{folder} was trained on {trained_on!r}, but the model given is {model_id!r}")
    base = trained_on or model_id
    if (folder / K.ADAPTER_DIR).is_dir():
        check_adapter_folder(folder / K.ADAPTER_DIR, None, require_rank)
        return Run("lora", base, folder / K.ADAPTER_DIR, folder, config)
    if (folder / K.FULL_MODEL_DIR).is_dir():
        return Run("full", base, folder / K.FULL_MODEL_DIR, folder, config)
    raise RunError(f"{folder} has {K.CONFIG_JSON} but neither {K.ADAPTER_DIR}/ nor {K.FULL_MODEL_DIR}/: "
                   f"the run did not finish; rerun the same training command to resume it")


def resolve_run(run: str | os.PathLike | None, profile: str, *, full: bool = False, adapter: str | None = None,
                model_id: str | None = None, require_rank: int | None = 1) -> Run:
    """The run a stage reads: ``adapter`` (a PEFT folder made elsewhere, put on ``model_id``), else
    ``run`` (a name under the runs folder or a path), else the profile's newest finished run."""
    if adapter:
        path = Path(adapter)
        if not path.is_dir():
            raise RunError(f"--adapter {adapter}: no such folder")
        if model_id is None:
            raise RunError("--adapter needs the base model it goes on (--model or the profile's model)")
        check_adapter_folder(path, model_id, require_rank)
        return Run("lora", model_id, path)
    if run:
        path = Path(run)
        if not path.is_dir():
            path = run_dir(str(run), full=full)
            if not path.is_dir() and not full and run_dir(str(run), full=True).is_dir():
                path = run_dir(str(run), full=True)
        if not path.is_dir():
            raise RunError(f"run {str(run)!r} not found (looked for a folder of that name and under "
                           f"{runs_dir(full)}); list runs with `ls {runs_dir(full)}`")
        return run_from_folder(path, model_id, require_rank)
    try:
        return run_from_folder(latest_run(profile, full), model_id, require_rank)
    except FileNotFoundError as e:
        raise RunError(str(e)) from None


@dataclass
class RunOptions:
    """The flags a stage names its run with. Stage configs inherit them as their first fields."""

    profile: str = option("profile the defaults came from", "tiny")
    run: str | None = option("rank-1 LoRA run: name or folder (default: the profile's newest finished run)")
    adapter: str | None = option("a PEFT adapter folder made elsewhere, put on --model (instead of --run)")
    model: str | None = option("base model of --adapter (default: the profile's model)")

    def resolve_run(self, require_rank: int | None = 1) -> Run:
        """The run these options name (see :func:`resolve_run`)."""
        model_id = None
        if self.adapter:
            model_id = self.model or load_profile(self.profile).common("model")
            if model_id and "{size}" in model_id:
                raise RunError(f"model {model_id!r} has a {{size}} placeholder: pass --model with the base model")
        return resolve_run(self.run, self.profile, adapter=self.adapter, model_id=model_id,
                           require_rank=require_rank)


def check_same_identity(expected: dict[str, Any], found: dict[str, Any], what: str) -> None:
    """Raise when ``what`` (an artifact) was made from other weights than the run given now."""
    keys = ("base_model", "weights_sha256")
    if any(expected.get(k) != found.get(k) for k in keys):
        raise RunError(f"{what} was made from run {found.get('run')!r} (sha256 "
                       f"{str(found.get('weights_sha256'))[:12]}), not from {expected.get('run')!r} "
                       f"(sha256 {str(expected.get('weights_sha256'))[:12]}); recompute it with --overwrite")
