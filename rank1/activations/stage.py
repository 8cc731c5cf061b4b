"""Stage 2 drivers shared by the LoRA and MLP scripts: extract a store, precompute its top-k examples.

Folders (``results_dir``): ``results/<profile>/{lora,mlp}_activations/<run>/`` (the store) and
``results/<profile>/{lora,mlp}_topk/<run>/`` (top-k examples); ``--out`` replaces either. The MLP side
belongs to the run too: its neurons are the run's base model's, sampled as many per layer as the run has
adapters per layer, and its corpus is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json
from rank1.capture import KINDS, CaptureSpec
from rank1.config import dataset_file, option, results_dir
from rank1.models import load_tokenizer
from rank1.runs import Run, RunOptions
from rank1.store import DTYPES, Store, StoreError, check_writable, extract_store, load_corpus, open_for_run
from rank1.topk import compute_topk, decode_vocab, used_token_ids

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig(RunOptions):
    corpus: str = option("s1-format records: 'synthetic' (data/<profile>/train.jsonl, what the run trained on), "
                         "or a .jsonl/.parquet path / dataset folder", "synthetic")
    max_tokens: int = option("stop adding documents once this many tokens are in (0: all)", 0)
    max_docs: int = option("at most this many documents (0: all)", 0)
    block_size: int = option("truncate each document to this many tokens (as in training)", 20000)
    shard_tokens: int = option("tokens per shard (memory per worker; resume granularity)", 65536)
    batch_tokens: int = option("padded tokens per forward pass", 8192)
    dtype: str = option("storage dtype: float16 (checked for overflow) | bfloat16 | float32", "float16")
    precision: str = option("compute precision: auto | bf16 | fp32", "auto")
    num_procs: int = option("data-parallel CPU worker processes", 1)
    num_gpus: int = option("data-parallel GPUs, one worker each (0: CPU or the one visible GPU)", 0)
    neurons_per_layer: int = option("MLP side: neurons per layer (0: as many as the run has adapters per layer)", 0)
    neuron_seed: int = option("MLP side: seed of the neuron sample", 0)
    out: str | None = option("output folder (default: results/<profile>/<kind>_activations/<run>)")
    overwrite: bool = option("recompute even if a finished store exists", False)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if min(self.shard_tokens, self.batch_tokens, self.block_size) < 1 or self.num_procs < 1 or self.num_gpus < 0:
            raise ValueError("need --shard_tokens, --batch_tokens, --block_size, --num_procs >= 1 and --num_gpus >= 0")
        if min(self.max_tokens, self.max_docs, self.neurons_per_layer) < 0:
            raise ValueError("--max_tokens, --max_docs and --neurons_per_layer must be >= 0")


@dataclass
class TopKConfig(RunOptions):
    store: str | None = option("activation store folder (default: the run's, under results/)")
    k: int = option("top examples per feature (feature = adapter x polarity)", 50)
    context: int = option("tokens of context on each side of an example", 30)
    n_per_decile: int = option("scoring examples drawn from each decile of the active values", 5)
    n_random: int = option("scoring examples from windows where the feature stays below its threshold", 20)
    active_frac: float = option("a token activates a feature above this fraction of the feature's maximum", 0.1)
    seed: int = option("seed of the scoring samples", 0)
    out: str | None = option("output folder (default: results/<profile>/<kind>_topk/<run>)")
    overwrite: bool = option("recompute even if the top-k examples exist", False)


def store_folder(cfg, kind: str, run: Run) -> Path:
    return Path(cfg.out) if getattr(cfg, "out", None) else results_dir(cfg.profile, f"{kind}_activations", run.name)


def extract(cfg: ExtractConfig, kind: str) -> Path:
    """Write the ``kind`` ('lora' | 'mlp') store of the run over the corpus; returns its folder."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    run = cfg.resolve_run()
    folder = store_folder(cfg, kind, run)
    check_writable(folder.parent if not folder.exists() else folder)
    tokenizer = load_tokenizer(run.model_id)
    corpus = load_corpus(tokenizer, dataset_file(cfg.corpus, cfg.profile), cfg.max_tokens, cfg.max_docs,
                         cfg.block_size)
    per_layer = cfg.neurons_per_layer or _adapters_per_layer(run)
    spec = CaptureSpec(run, kind, cfg.precision, per_layer, cfg.neuron_seed)
    sites = _sites(spec)
    return extract_store(spec, corpus, folder, sites=sites, identity=run.identity(), shard_tokens=cfg.shard_tokens,
                         batch_tokens=cfg.batch_tokens, dtype=cfg.dtype, workers=cfg.num_procs, gpus=cfg.num_gpus,
                         overwrite=cfg.overwrite, extra={"config": public_config(cfg)})


def _adapters_per_layer(run: Run) -> int:
    """Adapters per layer of the run (7 for all projections), read from its adapter config."""
    from rank1.lora import parse_projections
    targets = run.adapter_config.get("target_modules") or []
    return len(parse_projections(",".join(targets))) if targets else 7


def _sites(spec: CaptureSpec) -> list[dict]:
    """The site list, read from the adapter file (LoRA) or the model config (MLP) without loading weights;
    each worker checks that its loaded model has the same sites."""
    from transformers import AutoConfig

    from rank1.capture import sample_neurons
    from rank1.lora import PROJECTIONS, SAVED_KEY_RE
    from rank1.models import RANDOM_QWEN2, resolve_model_source, tiny_qwen2_config

    if spec.kind == "lora":
        from safetensors import safe_open
        with safe_open(str(spec.run.weights_dir / "adapter_model.safetensors"), framework="pt") as f:
            found = {(int(m.group(1)), m.group(2)) for m in map(SAVED_KEY_RE.search, f.keys()) if m}
        return [{"layer": lay, "name": p} for lay, p in sorted(found, key=lambda s: (s[0], PROJECTIONS.index(s[1])))]
    c = tiny_qwen2_config(1) if spec.run.model_id == RANDOM_QWEN2 else \
        AutoConfig.from_pretrained(resolve_model_source(spec.run.model_id))
    neurons = sample_neurons(c.num_hidden_layers, c.intermediate_size, spec.neurons_per_layer, spec.seed)
    return [{"layer": li, "name": f"n{n}", "neuron": n} for li, idx in enumerate(neurons) for n in idx]


def precompute_topk(cfg: TopKConfig, kind: str) -> Path:
    """Top-k examples of the ``kind`` store of the run; returns the output folder."""
    run = cfg.resolve_run()
    src = Path(cfg.store) if cfg.store else results_dir(cfg.profile, f"{kind}_activations", run.name)
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, f"{kind}_topk", run.name)
    store = open_for_run(src, run.identity())
    if store.manifest.get("kind") != kind:
        raise StoreError(f"{src} is a {store.manifest.get('kind')!r} store, this step reads a {kind!r} store")
    done = folder / K.CONFIG_JSON
    settings = {k: getattr(cfg, k) for k in ("k", "context", "n_per_decile", "n_random", "active_frac", "seed")}
    if done.is_file() and not cfg.overwrite:
        old = read_json(done)
        if old.get("store_key") == store.manifest["store_key"] and old.get("settings") == settings:
            log.info("top-k examples in %s are up to date; skipping (--overwrite recomputes)", folder)
            return folder
        raise StoreError(f"{folder} holds top-k examples of another store or other settings; pass --overwrite")
    check_writable(folder.parent if not folder.exists() else folder)
    done.unlink(missing_ok=True)
    result = compute_topk(store, **settings)
    result.vocab = decode_vocab(load_tokenizer(run.model_id), used_token_ids(result))
    result.save(folder)
    write_json(done, {**public_config(cfg), "kind": kind, "settings": settings, "identity": store.identity,
                      "store": str(src), "store_key": store.manifest["store_key"], "sites": store.sites,
                      "n_tokens": store.n_tokens, "n_docs": store.manifest["n_docs"],
                      "corpus": store.manifest["corpus"]})
    return folder


def open_store(folder: Path, run: Run) -> Store:
    return open_for_run(folder, run.identity())
