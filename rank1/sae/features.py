"""Stage 3.1: the SAE's features. A feature is an alive latent (one that fires on at least one token of the store).

Two streaming passes over the store, encoding each shard with the inference SAE (JumpReLU: every token on its
own, so an example's activation does not depend on what else was in its batch); no latent store is written:

1. per latent (all of them): firing count (density = count / tokens; like the SAE's training, without the first
   ``skip_first_tokens`` of each document, which are encoded as 0), activation mass (the sum of its
   activations over every token, the authors' "activation density"), maximum; decoder direction
   (``W_dec`` row, raw adapter space) and its top loadings over the layers x projections grid;
2. for the alive latents: :func:`rank1.topk.compute_topk` with the encoder as its columns and the positive
   polarity only (SAE latents are non-negative): top-k examples with context, quantiles, histograms, and for
   scoring, samples from each decile of the firing values and windows where the latent never fires.

Here are the encoder, the per-latent statistics and the decoder loadings;
:func:`rank1.sae.stage.run_collect_sae_features` runs both passes and writes the folder (the top-k format of
2.1, ``TopKResult.load(folder)``, plus ``latents.safetensors``), which :func:`load_features` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from rank1 import constants as K
from rank1.sae.split import SaeError
from rank1.store import Shard, Store, StoreError
from rank1.topk import TopKResult

COLLECTOR = "3_lora_sae/3.1_collect_sae_features.py"
N_LOADINGS = 8  # top decoder loadings listed per feature


def latent_name(latent: int, d_sae: int) -> str:
    return f"latent_{latent:0{max(4, len(str(d_sae - 1)))}d}"


class JumpReluColumns:
    """The encoder of a SAELens JumpReLU SAE restricted to some latents, column block by column block:
    ``relu(pre) * (pre > threshold)`` with ``pre = (x - b_dec) @ W_enc + b_enc``, exactly SAELens' ``encode``.
    Tokens at positions below ``skip`` (left out of the SAE's training) get 0."""

    def __init__(self, sae, latents: list[int], device: str = "cpu", skip: int = 0):
        if sae.cfg.architecture() != "jumprelu" or sae.cfg.normalize_activations != "none":
            raise SaeError(f"features need a JumpReLU SAE without run-time normalisation (what 3.0 saves); got "
                           f"{sae.cfg.architecture()!r} with normalize_activations={sae.cfg.normalize_activations!r}")
        idx = torch.tensor(latents, dtype=torch.long)
        self.device = torch.device(device)
        self.W_enc = sae.W_enc.detach().float()[:, idx].to(self.device)
        self.b_enc = sae.b_enc.detach().float()[idx].to(self.device)
        self.threshold = sae.threshold.detach().float()[idx].to(self.device)
        self.b_dec = (sae.b_dec.detach().float() * sae.cfg.apply_b_dec_to_input).to(self.device)
        self.skip = skip

    def encode(self, acts_TS: torch.Tensor, cols: slice) -> torch.Tensor:
        x = acts_TS.to(self.device).float() - self.b_dec
        pre = x @ self.W_enc[:, cols] + self.b_enc[cols]
        return torch.where(pre > self.threshold[cols], pre.relu(), torch.zeros_like(pre)).cpu()

    def __call__(self, sh: Shard, cols: slice) -> torch.Tensor:
        out = self.encode(sh.acts_TS, cols)
        out[sh.positions_T < self.skip] = 0.0
        return out


@torch.no_grad()
def latent_statistics(sae, store: Store, device: str = "cpu", skip: int = 0,
                      chunk: int = 8192) -> dict[str, torch.Tensor]:
    """Over every token of the store (but the first ``skip`` of each document), per latent: firing count,
    activation mass (sum, float64), maximum; and the number of tokens counted."""
    L = sae.cfg.d_sae
    enc = JumpReluColumns(sae, list(range(L)), device)
    n = torch.zeros((), dtype=torch.int64)
    count, mass, peak = torch.zeros(L, dtype=torch.int64), torch.zeros(L, dtype=torch.float64), torch.zeros(L)
    for sh in tqdm(store.shards(), total=len(store.manifest["shards"]), desc="latent statistics", unit="shard",
                   dynamic_ncols=True):
        acts = sh.acts_TS[sh.positions_T >= skip]
        n += len(acts)
        for c in range(0, len(acts), chunk):
            a = enc.encode(acts[c:c + chunk], slice(0, L))
            count += (a > 0).sum(0)
            mass += a.double().sum(0)
            peak = torch.maximum(peak, a.max(0).values)
    return {"firing_count_L": count, "activation_mass_L": mass, "max_L": peak, "n_tokens": n}


def top_loadings(w_dec_S: torch.Tensor, sites: list[dict], n: int = N_LOADINGS) -> list[dict[str, Any]]:
    """The ``n`` adapters a decoder direction loads on most: {layer, proj, value} with value the signed
    component of the unit-norm direction."""
    unit = w_dec_S / w_dec_S.norm().clamp(min=1e-30)
    order = unit.abs().argsort(descending=True)[:n].tolist()
    return [{"layer": sites[i]["layer"], "proj": sites[i]["name"], "value": round(float(unit[i]), 4)} for i in order]


def annotate_features(features: list[dict[str, Any]], latents: dict[str, torch.Tensor], sites: list[dict]) -> None:
    """Add to each feature record (``latent`` set) its firing count, density, activation mass, maximum and top
    decoder loadings, from the per-latent tensors of :func:`latent_statistics` and ``W_dec_LS``."""
    n = int(latents["n_tokens"])
    for f in features:
        i = f["latent"]
        f.update({"firing_count": int(latents["firing_count_L"][i]), "density": float(latents["firing_count_L"][i]) / n,
                  "activation_mass": float(latents["activation_mass_L"][i]), "max": float(latents["max_L"][i]),
                  "loadings": top_loadings(latents["W_dec_LS"][i], sites)})


def load_features(folder: str | Path) -> tuple[TopKResult, dict[str, torch.Tensor]]:
    """(top-k result of the features, per-latent tensors) of a finished 3.1 folder."""
    folder = Path(folder)
    res = TopKResult.load(folder, made_by=COLLECTOR)
    if res.meta.get("kind") != "sae" or not (folder / K.SAE_LATENTS).is_file():
        raise StoreError(f"{folder} holds no SAE features ({K.SAE_LATENTS} missing or not an SAE folder); make them "
                         f"with {COLLECTOR}")
    return res, load_file(str(folder / K.SAE_LATENTS))
