"""The write side of an adapter: its B vector read through the base model's final norm and unembedding.

An adapter adds ``s * a * B`` to its projection's output, with ``a = A . x`` its scalar activation and ``s`` the
RSLoRA scale (> 0). For ``o_proj`` and ``down_proj`` that output is the residual stream, so B is a residual
direction and its direct effect on the next-token logits is ``W_U (g * B)`` up to a positive factor (``g`` the
final RMSNorm's weight; the norm's 1/rms is positive and the same for every token). Sign convention: when the
feature fires with ``a > 0`` (the positive polarity) the tokens with the largest ``W_U (g * B)`` are promoted
and those with the smallest suppressed; for the negative polarity (``a < 0``) the two lists swap. This ignores
every later layer (a logit lens), which the page says beside the lists.

The unembedding is read from the model's safetensors files (two tensors, not the whole model: a 32B model's
``lm_head`` is 1.5 GB in bf16, the model 64 GB) where the model is a folder; the generated test models are
built in memory and read from the built model. Written here because no library reads one tensor of a model
by name across safetensors shards with tied embeddings resolved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from rank1.models import load_model, model_config, resolve_model_source

NORM_KEYS = ("model.norm.weight",)
UNEMBED_KEYS = ("lm_head.weight",)
EMBED_KEYS = ("model.embed_tokens.weight",)


@dataclass
class Unembedding:
    """The final norm's weight [d_model] and the unembedding [vocab, d_model], both float32."""

    norm_D: torch.Tensor
    W_VD: torch.Tensor

    def logits(self, direction_D: torch.Tensor) -> torch.Tensor:
        """[vocab] direct logit effect of adding ``direction_D`` to the final residual stream (up to a positive
        factor)."""
        return self.W_VD @ (self.norm_D * direction_D.float())

    def cosines(self, direction_D: torch.Tensor, token_ids: list[int]) -> list[float]:
        """cos(direction, unembedding row of each token)."""
        if not token_ids:
            return []
        rows = self.W_VD[torch.tensor(token_ids)]
        d = direction_D.float()
        return (rows @ d / (rows.norm(dim=1) * d.norm()).clamp(min=1e-30)).tolist()


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a model folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update(dict.fromkeys(h.keys(), f))
    return out


def _read(files: dict[str, Path], keys: tuple[str, ...]) -> torch.Tensor | None:
    for k in keys:
        if k in files:
            with safe_open(str(files[k]), framework="pt") as h:
                return h.get_tensor(k).float()
    return None


def load_unembedding(spec: str) -> Unembedding:
    """The final norm and unembedding of the base model ``spec`` (a folder, a converted GGUF or a built test
    model); a tied model's unembedding is its embedding."""
    src = Path(resolve_model_source(spec))
    if src.is_dir() and any(src.glob("*.safetensors")):
        files = _tensor_files(src)
        norm = _read(files, NORM_KEYS)
        tied = getattr(model_config(spec), "tie_word_embeddings", False)
        W = _read(files, EMBED_KEYS if tied else UNEMBED_KEYS)
        W = W if W is not None else _read(files, UNEMBED_KEYS + EMBED_KEYS)
        if norm is None or W is None:
            raise ValueError(f"{src}: no final norm ({NORM_KEYS[0]}) or unembedding ({UNEMBED_KEYS[0]} / "
                             f"{EMBED_KEYS[0]}) in its safetensors files; the logit lens needs a Llama/Qwen-style "
                             "model")
        return Unembedding(norm, W)
    model = load_model(spec)
    return Unembedding(model.model.norm.weight.detach().float(), model.get_output_embeddings().weight.detach().float())


def promoted(lens: Unembedding, direction_D: torch.Tensor, n: int, decode) -> dict[str, list]:
    """The ``n`` tokens with the largest and smallest direct logit effect of ``+direction``: {"top": [[token,
    value], ...] largest first, "bottom": [...] smallest first}; ``decode`` maps an id to its text."""
    logits = lens.logits(direction_D)
    hi, lo = logits.topk(n), (-logits).topk(n)
    return {"top": [[decode(int(i)), round(float(v), 4)] for v, i in zip(hi.values, hi.indices, strict=True)],
            "bottom": [[decode(int(i)), round(-float(v), 4)] for v, i in zip(lo.values, lo.indices, strict=True)]}
