"""Stage 3.1: the SAE's features. A feature is an alive latent (one that fires on at least one token of the store).

Two streaming passes over the store, encoding each shard with the inference SAE (JumpReLU: every token on its
own, so an example's activation does not depend on what else was in its batch); no latent store is written:

1. per latent (all of them): firing count (density = count / tokens; like the SAE's training, without the first
   ``skip_first_tokens`` of each document, which are encoded as 0), activation mass (the sum of its
   activations over every token, the authors' "activation density"), maximum; decoder direction
   (``W_dec`` row, raw adapter space) and its top loadings over the layers x projections grid;
2. for the alive latents: :func:`rank1.topk.compute_topk` with the encoder as its columns and the positive
   polarity only (SAE latents are non-negative): top-k examples with context, quantiles, histograms, and for
   scoring, samples from each decile of the firing values and windows where the latent never fires. The
   folder has part 1's top-k format (``TopKResult.load(folder)``), plus ``latents.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import read_json, write_run_metadata, write_with
from rank1.config import option, results_dir
from rank1.models import load_tokenizer
from rank1.runs import RunOptions
from rank1.sae.train import SaeError, load_sae
from rank1.store import Shard, Store, StoreError, check_writable, open_for_run
from rank1.topk import Columns, TopKResult, compute_topk, decode_vocab, used_token_ids

log = logging.getLogger(__name__)

COLLECTOR = "3_lora_sae/3.1_collect_sae_features.py"
N_LOADINGS = 8  # top decoder loadings listed per feature


@dataclass
class SaeFeaturesConfig(RunOptions):
    """Options of 3.1 (profile table ``[sae_features]``)."""

    store: str | None = option("activation store of 2.0 (default: results/<profile>/lora_activations/<run>)")
    sae: str | None = option("SAE folder of 3.0 (default: results/<profile>/sae/<run>)")
    k: int = option("top examples per feature", 32)
    context: int = option("tokens of context on each side of an example", 48)
    n_per_decile: int = option("scoring examples from each decile of the feature's firing values", 5)
    n_random: int = option("scoring examples from windows where the feature never fires", 20)
    seed: int = option("seed of the scoring samples", 0)
    block: int = option("latents encoded per step (memory: shard tokens x block floats)", 256)
    device: str = option("device of the encoder: cpu | cuda", "cpu")
    out: str | None = option("output folder (default: results/<profile>/sae_features/<run>)")
    overwrite: bool = option("recompute even if the features exist", False)

    def __post_init__(self):
        if self.k < 1 or self.context < 0 or self.n_per_decile < 0 or self.n_random < 0 or self.block < 1:
            raise ValueError("need --k >= 1, --context >= 0, --n_per_decile >= 0, --n_random >= 0, --block >= 1")


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


def collect_features(cfg: SaeFeaturesConfig) -> Path:
    """3.1: top examples and statistics of every alive latent of the run's SAE; returns the output folder."""
    run = cfg.resolve_run()
    src = Path(cfg.store) if cfg.store else results_dir(cfg.profile, "lora_activations", run.name)
    sae_dir = Path(cfg.sae) if cfg.sae else results_dir(cfg.profile, K.SAE_STAGE, run.name)
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.SAE_FEATURES_STAGE, run.name)
    store = open_for_run(src, run.identity())
    sae, sae_meta = load_sae(sae_dir, store, cfg.device)
    if cfg.k > store.n_tokens:
        raise StoreError(f"k={cfg.k} is larger than the store's {store.n_tokens} tokens; lower --k")
    settings = {k: getattr(cfg, k) for k in ("k", "context", "n_per_decile", "n_random", "seed")}
    done = folder / K.CONFIG_JSON
    if done.is_file() and not cfg.overwrite:
        old = read_json(done)
        if (old.get("store_key"), old.get("sae_settings_key"), old.get("settings")) == (
                store.manifest["store_key"], sae_meta["settings_key"], settings):
            log.info("SAE features in %s are up to date; skipping (--overwrite recomputes)", folder)
            return folder
        raise StoreError(f"{folder} holds features of another SAE, store or settings; pass --overwrite")
    check_writable(folder.parent if not folder.exists() else folder)
    done.unlink(missing_ok=True)

    skip = int(sae_meta.get("skip_first_tokens", 0))
    stats = latent_statistics(sae, store, cfg.device, skip)
    n_counted = int(stats["n_tokens"])
    L = sae.cfg.d_sae
    alive = (stats["firing_count_L"] > 0).nonzero()[:, 0].tolist()
    if not alive:
        raise SaeError(f"no latent of the SAE in {sae_dir} fires on the store {src}; retrain it (3.0)")
    log.info("%d of %d latents fire on the store's %d tokens (first %d of each document left out)", len(alive), L,
             n_counted, skip)
    columns = Columns([latent_name(i, L) for i in alive], [{"latent": i} for i in alive],
                      JumpReluColumns(sae, alive, cfg.device, skip), cfg.block)
    result = compute_topk(store, active_frac=0.0, columns=columns, positive_only=True, **settings)
    result.vocab = decode_vocab(load_tokenizer(run.model_id), used_token_ids(result))
    latents = {**stats, "W_dec_LS": sae.W_dec.detach().float().cpu().contiguous(),
               "feature_of_latent_L": torch.full((L,), -1, dtype=torch.int64)}
    latents["feature_of_latent_L"][alive] = torch.arange(len(alive))
    annotate_features(result.features, latents, store.sites)
    result.save(folder)
    write_with(folder / K.SAE_LATENTS, lambda tmp: save_file(latents, str(tmp)))
    write_run_metadata(folder, cfg, {
        "kind": "sae", "settings": settings, "active": "fires (activation > 0)", "identity": store.identity,
        "store": str(src), "store_key": store.manifest["store_key"], "sae": str(sae_dir),
        "sae_settings_key": sae_meta["settings_key"], "sites": store.sites, "n_tokens": store.n_tokens,
        "n_docs": store.manifest["n_docs"], "corpus": store.manifest["corpus"], "skip_first_tokens": skip,
        "n_tokens_encoded": n_counted, "d_sae": L, "n_alive": len(alive), "sae_summary": sae_meta.get("summary", {})})
    return folder


def load_features(folder: str | Path) -> tuple[TopKResult, dict[str, torch.Tensor]]:
    """(top-k result of the features, per-latent tensors) of a finished 3.1 folder."""
    folder = Path(folder)
    res = TopKResult.load(folder, made_by=COLLECTOR)
    if res.meta.get("kind") != "sae" or not (folder / K.SAE_LATENTS).is_file():
        raise StoreError(f"{folder} holds no SAE features ({K.SAE_LATENTS} missing or not an SAE folder); make them "
                         f"with {COLLECTOR}")
    return res, load_file(str(folder / K.SAE_LATENTS))


def load_run_features(opts, folder: str | None = None):
    """(run, features folder, top-k result, per-latent tensors) of the run ``opts`` names (any
    :class:`rank1.runs.RunOptions`): ``folder``, else ``results/<profile>/sae_features/<run>``; features made from
    another checkpoint are refused."""
    from rank1.config import results_dir
    from rank1.runs import check_same_identity

    run = opts.resolve_run()
    src = Path(folder) if folder else results_dir(opts.profile, K.SAE_FEATURES_STAGE, run.name)
    res, latents = load_features(src)
    check_same_identity(run.identity(), res.meta["identity"], f"SAE features {src}")
    return run, src, res, latents
