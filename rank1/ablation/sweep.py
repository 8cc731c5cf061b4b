"""Stage 1: how much each adapter, layer and projection type matters, measured by ablation.

An ablation removes a set of adapters (``rank1.hooks.ablate_adapters``: their ``lora_B`` output is
zero) and compares the ablated model with the full one on the assistant tokens of a fixed sample of
training-format sequences, per token:

- ``kl``: KL(P_full || P_ablated) over the next-token distribution, in nats (``rank1.metrics``, float64):
  how much is lost when the ablated model stands in for the full one. This is the direction the paper
  intends; the authors' code computed the same direction while its comment said the reverse.
- ``dce``: CE_ablated - CE_full of the true next token (positive: the ablation hurts).

Families: ``layer`` (all adapters of one layer), ``adapter`` (one adapter: the 7 x layers matrix) and
``type`` (every adapter of one projection; all MLP; all attention; all, which is the base model).

The cached prefix: adapters at layer ``l`` change nothing before ``l``. Per batch of sequences the full
model runs once, keeping the residual stream entering every layer where some ablation starts; each
ablation then runs only layers ``l..L-1`` + final norm + LM head (``rank1.decoder.LayerRunner``), and the
LM head only at the measured positions. Cache memory (the kept streams plus the full model's float64
log-probabilities at the measured positions) is estimated per sequence and batches are cut so it stays
under ``cache_limit_mb``; the peak actually held is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from rank1 import constants as K
from rank1.config import dataset_file, option, results_dir
from rank1.data import IGNORE_INDEX, load_reasoning_records, tokenize_record
from rank1.decoder import LayerRunner
from rank1.hooks import ablate_adapters
from rank1.lora import AdapterSite, verify_adapter
from rank1.metrics import kl_to_logits, log_probs64
from rank1.runs import PRECISIONS, Loaded, Run, RunError, RunOptions
from rank1.stats import DEFAULT_RESAMPLES, bootstrap_means

log = logging.getLogger(__name__)

FAMILIES = ("layer", "adapter", "type")
KL_DIRECTION = ("KL(P_full || P_ablated): the full model's next-token distribution P_full against the "
                "ablated model's, sum_v P_full(v) log(P_full(v) / P_ablated(v)), nats per assistant token")
DCE_MEANING = "CE_ablated - CE_full of the true next token, nats per assistant token (positive: ablation hurts)"
KL_ROWS = 16  # rows per float64 KL step (see head_kl_ce)
MEAN_MEANING = ("mean over sequences of each sequence's mean over its assistant tokens; 95% percentile "
                "bootstrap CI over sequences")


@dataclass
class AblationConfig(RunOptions):
    """Options of every stage-1 script (one profile table, ``[ablation]``)."""

    dataset: str = option("sequences: 'synthetic' (data/<profile>/train.jsonl), an s1-format file or a "
                          "hub dataset id", "synthetic")
    n_samples: int = option("sequences in the fixed sample", 16)
    seed: int = option("seed of the sample draw", 42)
    max_tokens: int = option("truncate each sequence to this many tokens", 2048)
    families: str = option(f"comma list of ablation families {FAMILIES}", ",".join(FAMILIES))
    cache_limit_mb: float = option("memory bound of the cached prefix per batch (batches are cut to fit)", 4096.0)
    token_chunk: int = option("positions per LM-head/KL chunk (bounds the [chunk, vocab] float64 buffers)", 256)
    cached_prefix: bool = option("run only the suffix after the first ablated layer (same results, faster)", True)
    n_resamples: int = option("bootstrap resamples over sequences", DEFAULT_RESAMPLES)
    precision: str = option(f"one of {PRECISIONS}", "auto")
    greedy_samples: int = option("iterative MLP ablation: the first n sequences of the sample score the "
                                 "candidates (0: all)", 0)
    greedy_rescore_every: int = option("iterative MLP ablation: rescore all remaining candidates every n "
                                       "removals (1: exact greedy)", 1)
    results_folder: str | None = option("figure scripts: read this results folder (default: "
                                        "results/<profile>/ablations/<run>)")
    viz_sequence: int = option("per-token KL figure: which sequence of the sample (position in the sample)", 0)
    viz_top: int = option("per-token KL figure: how many layers (largest mean KL) to draw", 3)
    overwrite: bool = option("recompute existing results", False)

    def __post_init__(self):
        if self.n_samples < 1 or self.max_tokens < 8 or self.token_chunk < 1 or self.n_resamples < 1:
            raise ValueError("need --n_samples >= 1, --max_tokens >= 8, --token_chunk >= 1, --n_resamples >= 1")
        if self.cache_limit_mb <= 0:
            raise ValueError(f"--cache_limit_mb must be > 0, got {self.cache_limit_mb}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.greedy_samples < 0 or self.greedy_rescore_every < 1 or self.viz_top < 1:
            raise ValueError("need --greedy_samples >= 0, --greedy_rescore_every >= 1, --viz_top >= 1")
        self.family_list()

    def family_list(self) -> tuple[str, ...]:
        names = tuple(f.strip() for f in self.families.split(",") if f.strip())
        bad = [f for f in names if f not in FAMILIES]
        if bad or not names:
            raise ValueError(f"--families {self.families!r}: unknown {bad or 'empty list'}; use a comma list of "
                             f"{FAMILIES}")
        return names

    def dataset_path(self) -> str:
        return dataset_file(self.dataset, self.profile)

    def sample_key(self) -> dict[str, Any]:
        """What fixes the sample: two results with equal keys measured the same sequences."""
        return {"dataset": self.dataset, "n_samples": self.n_samples, "seed": self.seed,
                "max_tokens": self.max_tokens}


# ---------------------------------------------------------------- run, sample, plan


def resolve_ablation_run(cfg: AblationConfig) -> Run:
    """The run to ablate: rank 1 (one scalar per adapter), every adapter its config names present."""
    run = cfg.resolve_run(require_rank=1)
    if run.kind != "lora":
        raise RunError(f"{run.name} is a full finetune: ablations need a LoRA run")
    check_adapter_complete(run)
    return run


def check_adapter_complete(run: Run) -> int:
    """Every (layer, projection) the adapter's config targets has its A and B saved (a missing one
    would be loaded as B = 0, and its ablation would silently measure nothing)."""
    from rank1.models import num_layers

    cfg = run.adapter_config
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted(set(targets) - set(K.PROJECTIONS))
    if unknown:
        raise RunError(f"{run.weights_dir}: target_modules {unknown} are not among {K.PROJECTIONS}")
    layers = cfg.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    layers = list(layers) if layers else list(range(num_layers(run.model_id)))
    try:
        return verify_adapter(run.weights_dir, layers, 1, tuple(p for p in K.PROJECTIONS if p in targets))
    except RuntimeError as e:
        raise RunError(f"{e}; retrain, or pass the complete adapter") from None


def draw_sample(n_records: int, n: int, seed: int, source: str) -> list[int]:
    """A fixed, seeded draw of ``n`` distinct record indices (in draw order)."""
    if n > n_records:
        raise ValueError(f"a sample of {n} sequences is larger than the data ({n_records} records in {source}); "
                         f"lower --n_samples")
    return random.Random(seed).sample(range(n_records), n)


def tokenize_sample(tokenizer, records: list[dict], indices: list[int], max_tokens: int,
                    context: int | None) -> list[dict[str, list[int]]]:
    """Training-format token ids and labels of the sampled records, truncated to ``max_tokens``."""
    if context is not None and max_tokens > context:
        raise ValueError(f"--max_tokens {max_tokens} is beyond the model's context ({context} positions); "
                         f"lower --max_tokens")
    items = [tokenize_record(tokenizer, records[i], max_tokens) for i in indices]
    for i, it in zip(indices, items, strict=True):
        if sum(t != IGNORE_INDEX for t in it["labels"][1:]) == 0:
            raise ValueError(f"record {i} has no assistant tokens within --max_tokens {max_tokens}; raise it")
    return items


@dataclass(frozen=True)
class Ablation:
    """A set of adapters removed together (indices into the site list) and its first layer."""

    name: str
    family: str
    sites: tuple[int, ...]
    start: int


def plan_ablations(sites: Sequence[AdapterSite], families: Sequence[str]) -> list[Ablation]:
    """Ablations of the requested families, named ``L3``, ``L3.gate_proj``, ``gate_proj``, ``mlp``,
    ``attn``, ``all``."""
    def make(name: str, family: str, idx: list[int]) -> Ablation:
        return Ablation(name, family, tuple(idx), min(sites[i].layer for i in idx))

    layers = sorted({s.layer for s in sites})
    plans: list[Ablation] = []
    if "layer" in families:
        plans += [make(f"L{lay}", "layer", [i for i, s in enumerate(sites) if s.layer == lay]) for lay in layers]
    if "adapter" in families:
        plans += [make(f"L{s.layer}.{s.proj}", "adapter", [i]) for i, s in enumerate(sites)]
    if "type" in families:
        groups = {p: [p] for p in K.PROJECTIONS} | {"mlp": K.MLP_PROJECTIONS, "attn": K.ATTN_PROJECTIONS,
                                                     "all": K.PROJECTIONS}
        for name, projs in groups.items():
            idx = [i for i, s in enumerate(sites) if s.proj in projs]
            if idx:
                plans.append(make(name, "type", idx))
    return plans


# ---------------------------------------------------------------- batches and the cached prefix


def cache_bytes_per_sequence(n_tokens: int, n_measured: int, n_cached_layers: int, hidden: int, vocab: int,
                             elem: int) -> int:
    """Bytes one sequence adds to a batch's cache: the kept residual streams and the float64
    log-probabilities and probabilities of the full model at its measured positions."""
    return n_cached_layers * n_tokens * hidden * elem + 2 * n_measured * vocab * 8


def cut_batches(lengths: list[int], measured: list[int], limit_bytes: float, per_sequence) -> list[list[int]]:
    """Group sequence positions (longest first, so padding stays small) into batches whose estimated
    cache ``sum(per_sequence(max_len, n_measured))`` stays under ``limit_bytes``; one sequence per
    batch at least."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1] + [i]
            t = max(lengths[j] for j in cur)
            if sum(per_sequence(t, measured[j]) for j in cur) <= limit_bytes:
                batches[-1] = cur
                continue
        batches.append([i])
    return batches


@dataclass
class Batch:
    """Right-padded ids of some sample sequences and the positions measured in them."""

    seqs: list[int]  # positions in the sample
    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    rows: tuple[torch.Tensor, torch.Tensor]  # (batch row, position) of each measured token, sequence-major
    targets_N: torch.Tensor  # the true next token at each measured position


def make_batch(items: list[dict[str, list[int]]], seqs: list[int], pad_id: int, device) -> Batch:
    """Measured positions ``t`` are those whose next token ``t+1`` is an assistant token."""
    t_max = max(len(items[s]["input_ids"]) for s in seqs)
    ids = torch.full((len(seqs), t_max), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t_max), dtype=torch.long)
    labels = torch.full((len(seqs), t_max), IGNORE_INDEX, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(items[s]["input_ids"])
        ids[b, :n], mask[b, :n] = torch.tensor(items[s]["input_ids"]), 1
        labels[b, :n] = torch.tensor(items[s]["labels"])
    bi, ti = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)
    return Batch(seqs, ids.to(device), mask.to(device), (bi.to(device), ti.to(device)),
                 ids[bi, ti + 1].to(device))


@dataclass
class Reference:
    """The full model at the measured positions: float64 log-probs, probs and negative entropy."""

    logp_NV: torch.Tensor
    p_NV: torch.Tensor
    neg_entropy_N: torch.Tensor

    @classmethod
    def from_stream(cls, runner: LayerRunner, h_NH: torch.Tensor, chunk: int) -> Reference:
        """From the full model's residual stream at the measured positions, ``chunk`` rows at a time."""
        logp = torch.empty((len(h_NH), runner.vocab_size), dtype=torch.float64, device=h_NH.device)
        for a in range(0, len(h_NH), chunk):
            logp[a:a + chunk] = log_probs64(runner.logits(h_NH[a:a + chunk]))
        p = logp.exp()
        return cls(logp, p, (p * logp).sum(-1))

    def tensors(self) -> list[torch.Tensor]:
        return [self.logp_NV, self.p_NV, self.neg_entropy_N]


def head_kl_ce(runner: LayerRunner, h_NH: torch.Tensor, ref: Reference, targets_N: torch.Tensor,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per measured position: KL(P_ref || P) and the CE of the true next token under P, where P comes
    from the residual stream ``h_NH``. The LM head runs ``chunk`` rows at a time (one read of its weights
    per chunk); the float64 KL, ``KL_ROWS`` rows at a time (its [rows, vocab] buffers stay in the CPU's
    cache: about 2.5x faster than whole chunks on the tiny model's 49k vocabulary)."""
    kl, ce = [], []
    for a in range(0, len(h_NH), chunk):
        logits = runner.logits(h_NH[a:a + chunk])
        for b in range(a, min(a + chunk, len(h_NH)), KL_ROWS):
            c, z = slice(b, b + KL_ROWS), logits[b - a:b - a + KL_ROWS]
            kl_n, lse_n = kl_to_logits(ref.logp_NV[c], z, ref.p_NV[c], ref.neg_entropy_N[c])
            kl.append(kl_n)
            ce.append(lse_n - z.gather(-1, targets_N[c, None])[:, 0].double())
    return torch.cat(kl), torch.cat(ce)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.inference_mode()
def sweep_batch(runner: LayerRunner, sites: Sequence[AdapterSite], batch: Batch, ablations: Sequence[Ablation],
                cached_prefix: bool = True, token_chunk: int = 256, bar=None) -> dict[str, torch.Tensor | int]:
    """KL and CE change of every ablation on one batch (float64, [ablations, measured tokens]);
    ``bar`` (a tqdm bar) advances by one per ablation."""
    ctx = runner.prepare(batch.input_ids_BT, batch.attention_mask_BT)
    keep = {a.start for a in ablations} if cached_prefix else set()
    h_BTD, cache = runner.run(ctx.h0_BTD, ctx, keep=keep)
    ref = Reference.from_stream(runner, h_BTD[batch.rows], token_chunk)
    ce_full = -ref.logp_NV.gather(-1, batch.targets_N[:, None])[:, 0]
    kl = torch.empty((len(ablations), len(ce_full)), dtype=torch.float64)
    dce = torch.empty_like(kl)
    for k, a in enumerate(ablations):
        start = a.start if cached_prefix else 0
        with ablate_adapters([sites[i] for i in a.sites]):
            h, _ = runner.run(cache[start] if cached_prefix else ctx.h0_BTD, ctx, start=start)
        kl_n, ce_n = head_kl_ce(runner, h[batch.rows], ref, batch.targets_N, token_chunk)
        kl[k], dce[k] = kl_n.cpu(), (ce_n - ce_full).cpu()
        if bar is not None:
            bar.update(1)
    held = tensor_bytes([*cache.values(), *ref.tensors()])
    return {"kl": kl, "dce": dce, "ce_full": ce_full.double().cpu(), "cache_bytes": held}


# ---------------------------------------------------------------- the sweep (resumable by batch)


@dataclass
class SweepResult:
    ablations: list[Ablation]
    kl_AN: np.ndarray  # float64, measured tokens concatenated in sample order
    dce_AN: np.ndarray
    ce_full_N: np.ndarray
    seq_ptr: np.ndarray  # tokens of sequence s are columns seq_ptr[s]:seq_ptr[s+1]
    peak_cache_bytes: int
    n_batches: int
    seconds: float

    def seq_means(self, x_AN: np.ndarray) -> np.ndarray:
        """[ablations, sequences]: each sequence's mean over its measured tokens."""
        return np.add.reduceat(x_AN, self.seq_ptr[:-1], axis=1) / np.diff(self.seq_ptr)


def run_sweep(loaded: Loaded, items: list[dict[str, list[int]]], ablations: list[Ablation],
              cache_limit_mb: float, token_chunk: int = 256, cached_prefix: bool = True,
              partial_dir: Path | None = None, partial_key: str = "", desc: str = "ablation sweep") -> SweepResult:
    """Every ablation on every sample sequence. With ``partial_dir``, each finished batch is saved there
    and reused by a later call with the same ``partial_key`` (a killed sweep continues)."""
    runner, sites = LayerRunner(loaded.model), loaded.sites
    cfg = runner.config
    elem = next(loaded.model.parameters()).element_size()
    n_cached = len({a.start for a in ablations}) if cached_prefix else 0
    measured = [sum(t != IGNORE_INDEX for t in it["labels"][1:]) for it in items]
    lengths = [len(it["input_ids"]) for it in items]

    def per_sequence(t, m):
        return cache_bytes_per_sequence(t, m, n_cached, cfg.hidden_size, runner.vocab_size, elem)

    batches = cut_batches(lengths, measured, cache_limit_mb * 2**20, per_sequence)
    if partial_dir is not None:
        _prepare_partial(partial_dir, partial_key)
    t0, peak, parts = time.perf_counter(), 0, {}
    bar = tqdm(total=len(batches) * len(ablations), desc=f"{desc} ({len(batches)} batches)", unit="ablation")
    for k, seqs in enumerate(batches):
        path = partial_dir / f"batch_{k:04d}.safetensors" if partial_dir is not None else None
        if path is not None and path.is_file():
            parts[k] = load_file(str(path))
            bar.update(len(ablations))
            continue
        batch = make_batch(items, seqs, loaded.tokenizer.pad_token_id, loaded.device)
        with loaded.autocast():
            out = sweep_batch(runner, sites, batch, ablations, cached_prefix, token_chunk, bar)
        peak = max(peak, int(out.pop("cache_bytes")))
        parts[k] = out
        if path is not None:
            save_file({n: t.contiguous() for n, t in out.items()}, str(path))
    bar.close()
    # reassemble in sample order: batch b holds its sequences' tokens sequence-major
    cols_kl, cols_dce, cols_ce = [None] * len(items), [None] * len(items), [None] * len(items)
    for k, seqs in enumerate(batches):
        offs = np.cumsum([0] + [measured[s] for s in seqs])
        for j, s in enumerate(seqs):
            sl = slice(offs[j], offs[j + 1])
            cols_kl[s], cols_dce[s] = parts[k]["kl"][:, sl].numpy(), parts[k]["dce"][:, sl].numpy()
            cols_ce[s] = parts[k]["ce_full"][sl].numpy()
    return SweepResult(ablations, np.concatenate(cols_kl, 1), np.concatenate(cols_dce, 1), np.concatenate(cols_ce),
                       np.cumsum([0] + measured), peak, len(batches), time.perf_counter() - t0)


def _prepare_partial(folder: Path, key: str) -> None:
    key_file = folder / "key.txt"
    if folder.is_dir() and (not key_file.is_file() or key_file.read_text() != key):
        shutil.rmtree(folder)  # made by another config or run: start over
    folder.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- summaries


def estimates(seq_means_SK: np.ndarray, n_resamples: int, seed: int = 0) -> dict[str, list[float]]:
    """Column means over sequences with percentile bootstrap CIs (units: sequences)."""
    mean, lo, hi = bootstrap_means(seq_means_SK, n_resamples=n_resamples, seed=seed)
    return {"mean": mean.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}


def summarize(result: SweepResult, sites: Sequence[AdapterSite], n_resamples: int) -> dict[str, Any]:
    """Per-family means with CIs; the per-adapter matrix is projections x layers (None where no adapter)."""
    kl_AS, dce_AS = result.seq_means(result.kl_AN), result.seq_means(result.dce_AN)
    kl, dce = estimates(kl_AS.T, n_resamples), estimates(dce_AS.T, n_resamples)
    index = {a.name: k for k, a in enumerate(result.ablations)}
    out: dict[str, Any] = {}

    def pick(est: dict[str, list[float]], names: list[str | None]) -> dict[str, list]:
        return {k: [None if n is None else v[index[n]] for n in names] for k, v in est.items()}

    by_family: dict[str, list[str]] = {}
    for a in result.ablations:
        by_family.setdefault(a.family, []).append(a.name)
    layers = sorted({s.layer for s in sites})
    if "layer" in by_family:
        out["layer"] = {"layers": layers, "kl": pick(kl, by_family["layer"]), "dce": pick(dce, by_family["layer"])}
    if "type" in by_family:
        out["type"] = {"names": by_family["type"], "kl": pick(kl, by_family["type"]),
                       "dce": pick(dce, by_family["type"])}
    if "adapter" in by_family:
        grid = [[f"L{lay}.{p}" if f"L{lay}.{p}" in index else None for lay in layers] for p in K.PROJECTIONS]
        out["adapter"] = {"projections": list(K.PROJECTIONS), "layers": layers,
                          "kl": {k: [pick(kl, row)[k] for row in grid] for k in ("mean", "lo", "hi")},
                          "dce": {k: [pick(dce, row)[k] for row in grid] for k in ("mean", "lo", "hi")}}
        # Figure 1's "mean KL by projection type": per sequence, the mean over layers of that
        # projection's single-adapter KLs; then the mean over sequences with its CI
        projs = [p for p in K.PROJECTIONS if any(n is not None for n in grid[K.PROJECTIONS.index(p)])]
        cols = [np.mean([kl_AS[index[n]] for n in grid[K.PROJECTIONS.index(p)] if n is not None], axis=0)
                for p in projs]
        out["adapter_mean_by_projection"] = {"projections": projs, "kl": estimates(np.stack(cols, 1), n_resamples)}
    return out


def save_per_token(path: Path, result: SweepResult, items: list[dict[str, list[int]]]) -> None:
    """Per-token arrays of one sweep (float32) with the token ids they were measured on."""
    measured_rows = [[t for t in range(len(it["labels"]) - 1) if it["labels"][t + 1] != IGNORE_INDEX] for it in items]
    tensors = {
        "kl": torch.from_numpy(result.kl_AN.astype(np.float32)),
        "dce": torch.from_numpy(result.dce_AN.astype(np.float32)),
        "ce_full": torch.from_numpy(result.ce_full_N.astype(np.float32)),
        "seq_ptr": torch.from_numpy(result.seq_ptr.astype(np.int64)),
        "positions": torch.tensor([t for rows in measured_rows for t in rows], dtype=torch.long),
        "input_ids": torch.tensor([t for it in items for t in it["input_ids"]], dtype=torch.long),
        "input_ptr": torch.tensor(np.cumsum([0] + [len(it["input_ids"]) for it in items]), dtype=torch.long),
    }
    meta = {"ablations": json.dumps([a.name for a in result.ablations]), "kl_direction": KL_DIRECTION,
            "layout": "kl/dce: [ablations, measured tokens]; tokens of sample sequence s are columns "
                      "seq_ptr[s]:seq_ptr[s+1]; positions[n] is the position t whose next token t+1 is "
                      "predicted; input_ids of sequence s are input_ids[input_ptr[s]:input_ptr[s+1]]"}
    save_file(tensors, str(path), metadata=meta)


def load_per_token(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = json.loads(f.metadata()["ablations"])
    return load_file(str(path)), names


def output_dir(cfg: AblationConfig, run: Run) -> Path:
    return results_dir(cfg.profile, K.ABLATION_STAGE, run.name)


def load_sample(cfg: AblationConfig, run: Run, tokenizer) -> tuple[list[int], list[dict[str, list[int]]], str]:
    """(record indices, tokenized sequences, data source) of the configured sample; checks it first."""
    from rank1.models import context_length

    source = cfg.dataset_path()
    records = load_reasoning_records(source)
    indices = draw_sample(len(records), cfg.n_samples, cfg.seed, source)
    return indices, tokenize_sample(tokenizer, records, indices, cfg.max_tokens, context_length(run.model_id)), source


# ---------------------------------------------------------------- the stage: measure, summarise, write


def sweep_report(cfg: AblationConfig, run: Run, sites: Sequence[AdapterSite], indices: list[int], items: list[dict],
                 source: str, result: SweepResult) -> dict[str, Any]:
    """The JSON of one sweep: how it was made, the sample, and the means with CIs per family."""
    return {
        "run": run.name, "identity": run.identity(), "config": cfg, "families": sorted({a.family for a in
                                                                                       result.ablations}),
        "kl_direction": KL_DIRECTION, "dce": DCE_MEANING, "means": MEAN_MEANING,
        "sample": {"source": source, **cfg.sample_key(), "indices": indices,
                   "n_tokens": [len(it["input_ids"]) for it in items],
                   "n_measured": np.diff(result.seq_ptr).tolist()},
        "sites": [[s.layer, s.proj] for s in sites],
        "ablations": [{"name": a.name, "family": a.family, "n_adapters": len(a.sites), "first_layer": a.start}
                      for a in result.ablations],
        "cost": {"seconds": result.seconds, "batches": result.n_batches, "cached_prefix": cfg.cached_prefix,
                 "peak_cache_bytes": result.peak_cache_bytes, "cache_limit_mb": cfg.cache_limit_mb,
                 "layer_forwards_per_batch": sum(len({s.layer for s in sites}) - (a.start if cfg.cached_prefix else 0)
                                                 for a in result.ablations)},
        **summarize(result, sites, cfg.n_resamples),
    }


SAMPLE_KEYS = ("dataset", "n_samples", "seed", "max_tokens")


def existing_result(path: Path, run: Run, cfg: AblationConfig, keys: Sequence[str] = SAMPLE_KEYS) -> dict | None:
    """A finished result at ``path`` for this run and these config ``keys`` (None if absent or
    ``--overwrite``); one made from other weights or with other settings is an error, not a silent reuse."""
    from rank1.artifacts import read_json
    from rank1.runs import check_same_identity

    if cfg.overwrite or not path.is_file():
        return None
    found = read_json(path)
    check_same_identity(run.identity(), found["identity"], str(path))
    for k in keys:
        if found["config"].get(k) != getattr(cfg, k):
            raise ValueError(f"{path} was made with {k}={found['config'].get(k)!r}, not {getattr(cfg, k)!r}; "
                             f"pass --overwrite to recompute it")
    return found


def results_folder(cfg: AblationConfig) -> Path:
    """Where the figure scripts read: ``--results_folder``, else the run's results folder (no model load)."""
    if cfg.results_folder:
        return Path(cfg.results_folder)
    if cfg.adapter:
        return results_dir(cfg.profile, K.ABLATION_STAGE, Path(cfg.adapter).name)
    return output_dir(cfg, cfg.resolve_run(require_rank=None))


def read_result(folder: Path, name: str, producer: str) -> dict[str, Any]:
    from rank1.artifacts import read_json

    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run 1_lora_adapter_ablations/{producer} first")
    return read_json(path)


def measure(cfg: AblationConfig, families: Sequence[str], json_name: str, tokens_name: str | None,
            desc: str) -> Path:
    """Resolve and check the run and the sample, sweep the families, write JSON (+ per-token side file,
    config.json, argv.json) into the run's results folder; skip when that JSON exists."""
    from rank1.artifacts import write_json, write_run_metadata, write_with

    run = resolve_ablation_run(cfg)
    out = output_dir(cfg, run)
    if existing_result(out / json_name, run, cfg, (*SAMPLE_KEYS, "families")) is not None:
        log.info("%s exists; skipping (--overwrite recomputes)", out / json_name)
        return out / json_name
    loaded = run.load(cfg.precision)
    indices, items, source = load_sample(cfg, run, loaded.tokenizer)
    sites = loaded.sites
    ablations = plan_ablations(sites, families)
    key = digest({"identity": run.identity(), "sample": cfg.sample_key(), "ablations": [a.name for a in ablations],
                  "cache_limit_mb": cfg.cache_limit_mb, "precision": cfg.precision})
    partial = out / K.ABLATION_PARTIAL_DIR / Path(json_name).stem
    log.info("%d ablations (%s) on %d sequences, %d assistant tokens", len(ablations), ",".join(families),
             len(items), sum(sum(t != IGNORE_INDEX for t in it["labels"][1:]) for it in items))
    result = run_sweep(loaded, items, ablations, cfg.cache_limit_mb, cfg.token_chunk, cfg.cached_prefix,
                       partial, key, desc)
    report = sweep_report(cfg, run, sites, indices, items, source, result)
    if tokens_name:
        write_with(out / tokens_name, lambda tmp: save_per_token(tmp, result, items))
        report["per_token_file"] = tokens_name
    write_run_metadata(out, cfg, {"identity": run.identity()})
    write_json(out / json_name, report)
    shutil.rmtree(partial, ignore_errors=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()
    log.info("%d ablations in %.0f s (%d batches, peak cache %.0f MiB); wrote %s", len(ablations), result.seconds,
             result.n_batches, result.peak_cache_bytes / 2**20, out / json_name)
    return out / json_name
