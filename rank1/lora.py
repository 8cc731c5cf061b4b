"""Rank-1 LoRA: layer selection, the PEFT config, finding adapters in a model, checking saved ones."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from rank1.config import parse_list
from rank1.constants import ATTN_PROJECTIONS, MLP_PROJECTIONS, PROJECTIONS
from rank1.errors import CheckFailed

log = logging.getLogger(__name__)

LORA_ALPHA = 16
SAVED_KEY_RE = re.compile(r"layers\.(\d+)\..*?(\w+_proj)\.lora_([AB])\.weight$")


def select_layers(num_layers: int, layer_start: int | None = None, layer_end: int | None = None,
                  last_third: bool = False, layer_indices: list[int] | None = None,
                  layer_stride: int = 1) -> list[int]:
    """Decoder layers that get adapters, following the authors' options.

    - default: every layer;
    - ``layer_start``/``layer_end``: the range [start, end), end exclusive;
    - ``last_third``: layers ``2n//3 .. n-1`` (cannot be combined with start/end);
    - ``layer_indices``: exactly these layers (cannot be combined with any other option);
    - ``layer_stride``: every stride-th layer of the range, starting at its first layer.
    """
    ranged = layer_start is not None or layer_end is not None
    if layer_indices is not None:
        if ranged or last_third or layer_stride != 1:
            raise ValueError("--layer_indices cannot be combined with --layer_start/--layer_end, "
                             "--last_third or --layer_stride")
        bad = [i for i in layer_indices if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"--layer_indices {bad} out of range: the model has layers "
                             f"0..{num_layers - 1}")
        if len(set(layer_indices)) != len(layer_indices) or not layer_indices:
            raise ValueError(f"--layer_indices must be distinct and non-empty, got {layer_indices}")
        return sorted(layer_indices)
    if last_third and ranged:
        raise ValueError("--last_third cannot be combined with --layer_start/--layer_end")
    if layer_stride < 1:
        raise ValueError(f"--layer_stride must be >= 1, got {layer_stride}")
    start = (2 * num_layers) // 3 if last_third else (0 if layer_start is None else layer_start)
    end = num_layers if layer_end is None else layer_end
    if not 0 <= start < num_layers:
        raise ValueError(f"--layer_start {start} out of range: the model has layers 0..{num_layers - 1}")
    if not start < end <= num_layers:
        raise ValueError(f"--layer_end {end} must satisfy layer_start ({start}) < layer_end <= "
                         f"{num_layers} (end is exclusive)")
    return list(range(start, end, layer_stride))


PROJECTION_GROUPS = {"all": PROJECTIONS, "mlp": MLP_PROJECTIONS, "attn": ATTN_PROJECTIONS}


def parse_projections(spec: Sequence[str] | str, flag: str = "projections") -> tuple[str, ...]:
    """The projections ``spec`` names, in the paper's projection order: ``[all]`` | ``[mlp]`` | ``[attn]`` | a list
    of projections (``[q, k, v]`` or ``[q_proj, gate_proj]``). A string is read as a comma-separated list (the
    target modules of a saved adapter, joined). ``flag`` names the option in the error of an unknown name."""
    items = parse_list(spec, str) if isinstance(spec, str) else list(spec)
    if len(items) == 1 and items[0] in PROJECTION_GROUPS:
        return PROJECTION_GROUPS[items[0]]
    names = {t if t.endswith("_proj") else f"{t}_proj" for t in items}
    unknown = sorted(names - set(PROJECTIONS))
    if unknown or not names:
        raise ValueError(f"--{flag} {','.join(items)!r}: unknown {unknown or 'empty list'}; use all, mlp, attn "
                         f"or a comma list of {[p.removesuffix('_proj') for p in PROJECTIONS]}")
    return tuple(p for p in PROJECTIONS if p in names)


def lora_config(layers: list[int], rank: int = 1, alpha: float = LORA_ALPHA,
                projections: tuple[str, ...] = PROJECTIONS) -> LoraConfig:
    """PEFT config of the paper: RSLoRA (scale alpha/sqrt(r)), no dropout, no bias, 7 projections
    (or the subset ``projections``)."""
    if rank < 1:
        raise ValueError(f"--rank must be >= 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=alpha, use_rslora=True, lora_dropout=0.0, bias="none",
                      target_modules=list(projections), layers_to_transform=list(layers),
                      layers_pattern="layers", task_type="CAUSAL_LM")


def rslora_scale(rank: int, alpha: float = LORA_ALPHA) -> float:
    return alpha / math.sqrt(rank)


@dataclass(frozen=True)
class AdapterSite:
    """One adapted projection: its layer, projection name and the PEFT LoRA module."""

    layer: int
    proj: str
    module: torch.nn.Module

    @property
    def is_mlp(self) -> bool:
        return self.proj in MLP_PROJECTIONS


def adapter_sites(model: PeftModel | torch.nn.Module, adapter: str = "default") -> list[AdapterSite]:
    """Every LoRA-wrapped projection, ordered by (layer, projection order of PROJECTIONS)."""
    sites = []
    for name, module in model.named_modules():
        m = re.search(r"layers\.(\d+)\.\w+\.(\w+_proj)$", name)
        if m and hasattr(module, "lora_A") and adapter in module.lora_A:
            sites.append(AdapterSite(int(m.group(1)), m.group(2), module))
    return sorted(sites, key=lambda s: (s.layer, PROJECTIONS.index(s.proj)))


class AdapterCheckError(CheckFailed):
    """A saved adapter is incomplete, empty, untrained or of another rank than asked."""


def factor_problems(found: dict[tuple[int, str, str], torch.Tensor], rank: int, folder: Path,
                    control: bool = False) -> list[str]:
    """What is wrong with the saved factors ``{(layer, projection, "A" | "B"): tensor}``: shapes, non-finite
    values, an all-zero A, every B all zero (some zero B are logged, see :func:`verify_adapter`). With
    ``control`` (the random-direction control, :func:`verify_control_adapter`) the opposite: any B that is not
    all zero."""
    problems, b_sites, zero_b = [], [], []
    for (lay, p, ab), t in sorted(found.items()):
        if t.numel() == 0 or t.dim() != 2 or (t.shape[0] if ab == "A" else t.shape[1]) != rank:
            problems.append(f"layer {lay} {p} lora_{ab} has shape {tuple(t.shape)} (empty or not rank {rank})")
        elif not torch.isfinite(t).all():
            problems.append(f"layer {lay} {p} lora_{ab} has non-finite values")
        elif ab == "A" and not t.any():
            problems.append(f"layer {lay} {p} lora_A is all zero")
        elif ab == "B":
            b_sites.append((lay, p))
            if not t.any():
                zero_b.append((lay, p))
    if control:
        nonzero = sorted(set(b_sites) - set(zero_b), key=lambda site: (site[0], PROJECTIONS.index(site[1])))
        return problems + [f"layer {lay} {p} lora_B is not zero: the random-direction control must compute the "
                           f"base model" for lay, p in nonzero[:5]]
    if zero_b and len(zero_b) == len(b_sites):
        problems.append(f"every lora_B ({len(zero_b)}) is all zero: the adapter was never trained (B starts "
                        f"at zero, so it computes the base model); check the learning rate and the number "
                        f"of steps (a one-step run spends its step in warmup, at lr 0)")
    elif zero_b:
        zero_b.sort(key=lambda site: (site[0], PROJECTIONS.index(site[1])))
        shown = ", ".join(f"layer {lay} {p}" for lay, p in zero_b[:5]) + (", ..." if len(zero_b) > 5 else "")
        log.warning("adapter in %s: lora_B is all zero at %d of %d sites (%s); those adapters contribute "
                    "nothing", folder, len(zero_b), len(b_sites), shown)
    return problems


def verify_adapter(folder: str | Path, layers: list[int], rank: int,
                   projections: tuple[str, ...] = PROJECTIONS) -> int:
    """Check a saved adapter is complete and trained: every (layer, projection) has non-empty, finite
    ``lora_A`` (rank x in) and ``lora_B`` (out x rank), no A is all zero, not every B is all zero, and
    the config says rank ``rank`` with RSLoRA. Returns the number of adapters; raises
    AdapterCheckError otherwise.

    Sharded engines (DeepSpeed ZeRO-3) can save placeholder tensors of shape (0,) when parameters
    are not gathered: this is the check that catches it. B starts at zero and A at random, so an
    adapter whose every B is zero is the untrained one (it computes the base model). Some zero B
    beside trained ones is a valid adapter (an ablated copy zeroes the B of the adapters it
    switches off): it passes, with a warning naming them.
    """
    folder = Path(folder)
    problems: list[str] = []
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise AdapterCheckError(f"{p} is missing: the adapter was not saved")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("r") != rank or not cfg.get("use_rslora"):
        problems.append(f"adapter_config.json has r={cfg.get('r')}, use_rslora={cfg.get('use_rslora')}"
                        f"; expected r={rank} with RSLoRA")
    found: dict[tuple[int, str, str], torch.Tensor] = {}
    for key, t in load_file(str(w_path)).items():
        m = SAVED_KEY_RE.search(key)
        if m:
            found[(int(m.group(1)), m.group(2), m.group(3))] = t
    expected = {(lay, p, ab) for lay in layers for p in projections for ab in "AB"}
    missing = sorted(expected - set(found))
    extra = sorted(set(found) - expected)
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors, e.g. {extra[:3]}")
    problems += factor_problems(found, rank, folder)
    if problems:
        raise AdapterCheckError(f"adapter in {folder} is incomplete or untrained:\n  " + "\n  ".join(problems[:10]))
    return len(expected) // 2


CONTROL_RECORD = "random_control.json"  # marks an adapter folder as the random-direction control (B = 0)


def verify_control_adapter(folder: str | Path, layers: list[int], projections: tuple[str, ...] = PROJECTIONS) -> int:
    """Check the random-direction control (``rank1.activations.control``): the exemption from the training
    check's "every B is zero means untrained" is explicit and recorded, never inferred: the folder must hold
    :data:`CONTROL_RECORD`, and every (layer, projection) must have a finite, non-zero rank-1 ``lora_A`` and a
    ``lora_B`` that is exactly zero (so the model with it is the base model). Returns the number of adapters;
    raises AdapterCheckError otherwise."""
    folder = Path(folder)
    for p in (folder / CONTROL_RECORD, folder / "adapter_model.safetensors"):
        if not p.is_file():
            raise AdapterCheckError(f"{p} is missing: {folder} is not a random-direction control; draw it again "
                                    f"with --overwrite")
    found = {(int(m.group(1)), m.group(2), m.group(3)): t
             for key, t in load_file(str(folder / "adapter_model.safetensors")).items()
             if (m := SAVED_KEY_RE.search(key))}
    expected = {(lay, p, ab) for lay in layers for p in projections for ab in "AB"}
    problems = [f"{len(d)} tensors {what}, e.g. {sorted(d)[:3]}" for d, what in
                ((expected - set(found), "missing"), (set(found) - expected, "unexpected")) if d]
    problems += factor_problems(found, 1, folder, control=True)
    if problems:
        raise AdapterCheckError(f"random-direction control in {folder} is not valid:\n  " + "\n  ".join(problems[:10]))
    return len(expected) // 2


def adapter_vectors(folder: str | Path) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """Rank-1 factors of a saved adapter: {(layer, projection): (A [in], B [out])} as float32."""
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(Path(folder) / "adapter_model.safetensors")).items():
        m = SAVED_KEY_RE.search(key)
        if m:
            found.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.float()
    out = {}
    for site, ab in found.items():
        if ab["A"].shape[0] != 1 or ab["B"].shape[1] != 1:
            raise ValueError(f"layer {site[0]} {site[1]}: not rank 1 (A {tuple(ab['A'].shape)})")
        out[site] = (ab["A"][0], ab["B"][:, 0])
    return out


def cosine_matrix(vectors_ND: torch.Tensor) -> torch.Tensor:
    """[N, N] cosine similarities of the rows (float64 norms; a zero row gives 0)."""
    v = vectors_ND.double()
    unit = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return (unit @ unit.T).float()


Vectors = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (layer, proj) -> (A [in], B [out])


def factor(vectors: Vectors, layer: int, proj: str, ab: str) -> torch.Tensor:
    """A (``ab == "A"``) or B of one adapter of :func:`adapter_vectors`."""
    if ab not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {ab!r}")
    return vectors[(layer, proj)][0 if ab == "A" else 1]


def factor_norms(vectors: Vectors, layers: list[int], projections: list[str]) -> dict[str, dict[str, list]]:
    """{"A"|"B": {proj: [||factor|| per layer, None where the layer has no such adapter]}}."""
    return {ab: {p: [float(factor(vectors, la, p, ab).norm()) if (la, p) in vectors else None for la in layers]
                 for p in projections} for ab in "AB"}


def across_layers(vectors: Vectors, proj: str, ab: str, layers: list[int]) -> torch.Tensor | None:
    """[L, L] signed cosines of one factor between layers; None unless every layer has the adapter."""
    if not all((la, proj) in vectors for la in layers):
        return None
    return cosine_matrix(torch.stack([factor(vectors, la, proj, ab) for la in layers]))
