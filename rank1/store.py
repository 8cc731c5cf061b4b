"""The sharded activation store: per token, one value per site (LoRA scalars or MLP neurons).

Layout of a store folder::

    manifest.json                 written last: kind, run identity, site order, corpus hash, shard list
    timings.json                  wall time of the extraction (kept out of the manifest: it varies run to run)
    shards/shard_00000.safetensors
        acts_TS      [tokens, sites] float16 (or bfloat16 / float32: ``dtype`` in the manifest)
        token_ids_T  int32   token id
        doc_ids_T    int32   index of the document in the corpus
        positions_T  int32   position of the token in its document (0 = first token of the chat)

Shards hold whole documents (a document never spans two shards, so a context window is always inside one
shard), consecutive in corpus order; the shard plan depends only on the document lengths and
``shard_tokens``. Each shard carries the store key (hash of run identity, site list, corpus and dtype) in
its safetensors metadata, so an interrupted extraction keeps the finished shards that belong to the same
store and redoes the rest (so does a store whose manifest is damaged). Memory is bounded by one shard per
worker. Workers (``num_procs`` on CPU, ``num_gpus`` on GPU) take every n-th shard; GPU worker i runs on the i-th
visible GPU (:func:`worker_gpus`) and loads the model straight onto it. A worker that fails or dies (OOM killer)
fails the extraction at once, with its exit code; the finished shards stay, so a rerun resumes.

Read a store with :meth:`Store.open` (checks the manifest, each shard's presence and size, and, if given,
the run identity) and stream it with :meth:`Store.shards`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import REBUILT_BY, make_folder, read_json, record_timings, write_json, write_safetensors
from rank1.batching import longest_first, pad_ids
from rank1.capture import Capture, CaptureSpec
from rank1.data import load_reasoning_records, tokenize_record
from rank1.errors import CorruptArtifact
from rank1.runs import RunError, check_same_identity

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SHARD_KEYS = ("acts_TS", "token_ids_T", "doc_ids_T", "positions_T")


class StoreError(ValueError):
    """A store that cannot be read or written as asked (the message says what to do)."""


# ---------------------------------------------------------------- corpus and plan


@dataclass
class Corpus:
    """Tokenized documents in the training format (chat template, s1 assistant turn)."""

    source: str
    docs: list[np.ndarray]  # int32 token ids per document

    @property
    def n_tokens(self) -> int:
        return int(sum(len(d) for d in self.docs))

    def sha256(self) -> str:
        h = hashlib.sha256()
        for d in self.docs:
            h.update(np.int64(len(d)).tobytes())
            h.update(d.astype("<i4").tobytes())
        return h.hexdigest()


def load_corpus(tokenizer, source: str, max_tokens: int = 0, max_docs: int = 0, block_size: int = 20000) -> Corpus:
    """The first documents of ``source`` (s1-format records) until ``max_tokens`` tokens or ``max_docs``
    documents (0: no limit), each tokenized as in training and truncated to ``block_size``."""
    records = load_reasoning_records(source)
    docs: list[np.ndarray] = []
    total = 0
    for rec in records:
        if (max_docs and len(docs) >= max_docs) or (max_tokens and total >= max_tokens):
            break
        ids = np.asarray(tokenize_record(tokenizer, rec, block_size)["input_ids"], dtype=np.int32)
        if len(ids):
            docs.append(ids)
            total += len(ids)
    if not docs:
        raise StoreError(f"corpus {source} gave no tokens (max_docs={max_docs}, max_tokens={max_tokens}); "
                         f"give a corpus with at least one non-empty record")
    if max_tokens and total < max_tokens:
        log.warning("corpus %s holds only %d tokens (%d documents), fewer than max_tokens=%d",
                    source, total, len(docs), max_tokens)
    return Corpus(source, docs)


def plan_shards(doc_lengths: list[int], shard_tokens: int) -> list[tuple[int, int]]:
    """Consecutive document ranges [start, end): a shard closes once it holds >= ``shard_tokens`` tokens
    (a document longer than that is a shard of its own)."""
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    plan, start, n = [], 0, 0
    for i, length in enumerate(doc_lengths):
        n += length
        if n >= shard_tokens:
            plan.append((start, i + 1))
            start, n = i + 1, 0
    if start < len(doc_lengths):
        plan.append((start, len(doc_lengths)))
    return plan


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def store_key(identity: dict, sites: list[dict], corpus_sha: str, dtype: str, shard_tokens: int) -> str:
    """What makes two stores the same: same weights, sites, corpus tokens, dtype and shard plan."""
    blob = json.dumps([identity.get("base_model"), identity.get("weights_sha256"), sites, corpus_sha, dtype,
                       shard_tokens], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- writing


def to_storage(acts_TS: torch.Tensor, dtype: str, sites: list[dict]) -> torch.Tensor:
    """Cast float32 activations to the storage dtype; raise if any value is not finite or would overflow."""
    target = DTYPES[dtype]
    finite = torch.isfinite(acts_TS)
    if not finite.all():
        col = int((~finite).any(0).nonzero()[0])
        raise StoreError(f"non-finite activation at site {sites[col]}: the model diverged on this corpus")
    peak = torch.finfo(target).max
    over = acts_TS.abs() > peak
    if over.any():
        col = int(over.any(0).nonzero()[0])
        raise StoreError(f"activation {acts_TS[:, col].abs().max().item():.4g} at site {sites[col]} exceeds the "
                         f"{dtype} range ({peak:.4g}); rerun with --dtype bfloat16 (or float32)")
    return acts_TS.to(target)


def extract_shard(capture, docs: list[np.ndarray], doc_start: int, dtype: str, batch_tokens: int,
                  pad_id: int, progress=None) -> dict[str, torch.Tensor]:
    """Run the capture over one shard's documents, in padded batches of at most ``batch_tokens`` tokens
    (a longer document is a batch of its own); rows in document order. ``progress(n)`` is called with
    the tokens of each finished batch."""
    lengths = [len(d) for d in docs]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    acts = torch.empty((int(offsets[-1]), len(capture.sites)), dtype=DTYPES[dtype])
    for group in longest_first(lengths, batch_tokens):
        ids, mask = pad_ids([docs[i] for i in group], pad_id)
        acts_BTS = capture(ids, mask).cpu()
        for row, i in enumerate(group):
            acts[offsets[i]:offsets[i + 1]] = to_storage(acts_BTS[row, :lengths[i]], dtype, capture.sites)
        if progress is not None:
            progress(sum(lengths[i] for i in group))
    return {
        "acts_TS": acts,
        "token_ids_T": torch.from_numpy(np.concatenate(docs).astype(np.int32)),
        "doc_ids_T": torch.from_numpy(np.repeat(np.arange(doc_start, doc_start + len(docs), dtype=np.int32),
                                                lengths)),
        "positions_T": torch.from_numpy(np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])),
    }


def shard_is_done(path: Path, key: str) -> bool:
    """A finished shard of the same store (readable header carrying ``key``, file complete)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("store_key") != key:
                return False
            n = int(meta["n_tokens"])
            return all(f.get_slice(k).get_shape()[0] == n for k in SHARD_KEYS)
    except (SafetensorError, OSError, KeyError, ValueError):
        return False


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    write_safetensors(path, tensors, meta)


@dataclass(frozen=True)
class Job:
    """The part of an extraction one worker does (picklable)."""

    spec: CaptureSpec
    sites: list[dict]
    corpus: Corpus
    plan: list[tuple[int, int]]
    shards: list[int]  # which shard indices this worker writes
    folder: Path
    key: str
    dtype: str
    batch_tokens: int
    threads: int = 0
    rank: int = 0
    on_gpu: bool = False  # a GPU worker: fails where it finds no CUDA device (never falls back to CPU)
    gpu: str | None = None  # the CUDA_VISIBLE_DEVICES of the worker's process (None: inherited)

    @property
    def where(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else "GPU" if self.on_gpu else "CPU"


def worker_gpus(num_gpus: int, visible: str | None, n_visible: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each of ``num_gpus`` GPU workers: worker i gets the i-th entry of the
    inherited list ``visible`` (indices or UUIDs, as a scheduler sets them: SLURM gives "4,5,6,7"), or "i"
    where none is set. ``n_visible`` is how many GPUs this process sees (``torch.cuda.device_count()``, which
    honours the list); asking for more fails here instead of sending the extra workers to the CPU."""
    if visible is None:
        entries = [str(i) for i in range(n_visible)]
    else:
        entries = [e.strip() for e in visible.split(",") if e.strip()][:n_visible]
    if num_gpus > len(entries):
        listed = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise StoreError(f"num_gpus={num_gpus} but this process sees {len(entries)} GPU(s){listed}: pass "
                         f"--num_gpus {len(entries)} (0: CPU workers, --num_procs), or run where {num_gpus} GPUs "
                         f"are visible")
    return entries[:num_gpus]


def run_job(job: Job, progress: Callable[[int], Any] | None = None) -> None:
    """Extract ``job.shards`` (with ``job.threads`` CPU threads, restored afterwards); ``progress(n)`` gets the
    tokens of each finished batch."""
    if job.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu  # before the first CUDA call of this process
    if job.on_gpu and not torch.cuda.is_available():
        raise StoreError(f"extraction worker {job.rank} ({job.where}) finds no CUDA device; it does not fall back "
                         f"to the CPU (one store would mix numerics): check the driver and CUDA_VISIBLE_DEVICES, "
                         f"or pass --num_gpus 0")
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads or threads)
    try:
        _extract_shards(job, progress)
    finally:
        torch.set_num_threads(threads)


def _extract_shards(job: Job, progress: Callable[[int], Any] | None) -> None:
    # a GPU worker loads every weight straight onto its GPU, without a copy of the model in host RAM first
    loaded = job.spec.run.load(job.spec.precision, device_map={"": "cuda"} if job.on_gpu else None)
    capture = Capture(job.spec, loaded)
    if capture.sites != job.sites:
        raise StoreError(f"the loaded model has {len(capture.sites)} sites, the plan {len(job.sites)}: "
                         f"the run changed while extracting; rerun")
    pad_id = loaded.tokenizer.pad_token_id or 0
    for i in job.shards:
        start, end = job.plan[i]
        tensors = extract_shard(capture, job.corpus.docs[start:end], start, job.dtype, job.batch_tokens, pad_id,
                                progress)
        n = tensors["acts_TS"].shape[0]
        _save_shard(job.folder / K.STORE_SHARDS_DIR / shard_name(i), tensors,
                    {"store_key": job.key, "shard": str(i), "doc_start": str(start), "doc_end": str(end),
                     "n_tokens": str(n)})


def _worker(job: Job, conn) -> None:
    """A worker process: token counts, then ("done", None) or ("error", message), through ``conn``."""
    try:
        run_job(job, conn.send)
    except BaseException as e:  # the parent reports it as one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None
    conn.send(("done", None))


def check_writable(folder: Path) -> None:
    try:
        make_folder(folder)  # removed again if the stage fails while it is empty
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise StoreError(f"output folder {folder} is not writable ({e.strerror or e}); "
                         f"pass --out DIR or set RANK1_ROOT to a writable place") from None


def _finished_manifest(path: Path) -> dict | None:
    """The manifest of a finished store, or None when it is damaged: the store is then rebuilt like an unfinished
    one (the shards carry their store key, so those of the same inputs are kept and the rest redone)."""
    try:
        return read_json(path, "rebuilding the store (its finished shards of the same inputs are kept)")
    except CorruptArtifact as e:
        log.warning("%s", e)
        return None


def extract_store(spec: CaptureSpec, corpus: Corpus, folder: Path, *, sites: list[dict], identity: dict,
                  shard_tokens: int, batch_tokens: int, dtype: str = "float16", workers: int = 1,
                  gpus: int = 0, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write (or finish) the store of ``corpus`` under ``folder`` and return it. ``sites`` and
    ``identity`` describe what the capture records; they go into the manifest and the store key."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    corpus_sha = corpus.sha256()
    key = store_key(identity, sites, corpus_sha, dtype, shard_tokens)
    manifest_path = folder / K.STORE_MANIFEST
    old = _finished_manifest(manifest_path) if manifest_path.is_file() and not overwrite else None
    if old is not None:
        if old.get("store_key") != key:
            raise StoreError(f"{folder} holds a store of other inputs (run {old.get('identity', {}).get('run')!r}, "
                             f"corpus {str(old.get('corpus', {}).get('sha256'))[:12]}); pass --overwrite to "
                             f"replace it, or --out DIR")
        try:
            Store.open(folder)
            log.info("store %s is complete; skipping (--overwrite recomputes)", folder)
            return folder
        except StoreError as e:
            log.warning("%s; redoing the missing shards", e)
    gpu_ids = worker_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()) if gpus else []
    check_writable(folder)
    manifest_path.unlink(missing_ok=True)  # a store without one did not finish (also when this run is killed)
    if overwrite:
        shutil.rmtree(folder / K.STORE_SHARDS_DIR, ignore_errors=True)
    (folder / K.STORE_SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    plan = plan_shards([len(d) for d in corpus.docs], shard_tokens)
    todo = [i for i in range(len(plan))
            if not shard_is_done(folder / K.STORE_SHARDS_DIR / shard_name(i), key)]
    lengths = [sum(len(d) for d in corpus.docs[s:e]) for s, e in plan]
    log.info("store %s: %d shards (%d already done), %d tokens, %d sites, %s", folder, len(plan),
             len(plan) - len(todo), corpus.n_tokens, len(sites), dtype)
    t0 = time.time()
    bar = tqdm(total=sum(lengths[i] for i in todo), desc=f"extract {spec.kind}", unit="tok", unit_scale=True,
               dynamic_ncols=True)
    n_workers = max(1, min(gpus or workers, len(todo) or 1))
    # CPU threads per process from the workers asked for, not from the shards left: a resumed store is computed
    # as an uninterrupted one (the last shard of a rerun runs in this process, with a worker's threads)
    threads = 0 if gpus or workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    jobs = [Job(spec, sites, corpus, plan, todo[r::n_workers], folder, key, dtype, batch_tokens, threads, rank=r,
                on_gpu=bool(gpus), gpu=gpu_ids[r] if gpus and n_workers > 1 else None) for r in range(n_workers)]
    if n_workers == 1:
        run_job(jobs[0], bar.update)
    else:
        _run_parallel(jobs, bar)
    bar.close()
    shards = []
    for i, (start, end) in enumerate(plan):
        path = folder / K.STORE_SHARDS_DIR / shard_name(i)
        shards.append({"file": f"{K.STORE_SHARDS_DIR}/{shard_name(i)}", "doc_start": start, "doc_end": end,
                       "n_tokens": lengths[i], "bytes": path.stat().st_size})
    record_timings(folder, K.STORE_MANIFEST, seconds_this_session=time.time() - t0)
    write_json(manifest_path, {
        "format_version": FORMAT_VERSION, "kind": spec.kind, "store_key": key, "identity": identity,
        "sites": sites, "dtype": dtype, "shard_tokens": shard_tokens, "n_tokens": corpus.n_tokens,
        "n_docs": len(corpus.docs), "corpus": {"source": corpus.source, "sha256": corpus_sha},
        "shards": shards, **(extra or {})})
    return folder


def write_store(folder: Path, shards: list[dict[str, torch.Tensor]], sites: list[dict], identity: dict,
                kind: str = "lora", dtype: str = "float16") -> Store:
    """A store from tensors in memory (shard dicts with the keys of SHARD_KEYS): for tests and benchmarks."""
    key = store_key(identity, sites, "in-memory", dtype, 0)
    entries, start = [], 0
    for i, t in enumerate(shards):
        path = folder / K.STORE_SHARDS_DIR / shard_name(i)
        n = t["acts_TS"].shape[0]
        _save_shard(path, {**t, "acts_TS": to_storage(t["acts_TS"].float(), dtype, sites)},
                    {"store_key": key, "shard": str(i), "n_tokens": str(n)})
        docs = t["doc_ids_T"]
        entries.append({"file": f"{K.STORE_SHARDS_DIR}/{shard_name(i)}", "doc_start": int(docs.min()),
                        "doc_end": int(docs.max()) + 1, "n_tokens": n, "bytes": path.stat().st_size})
        start += n
    write_json(folder / K.STORE_MANIFEST, {
        "format_version": FORMAT_VERSION, "kind": kind, "store_key": key, "identity": identity, "sites": sites,
        "dtype": dtype, "shard_tokens": 0, "n_tokens": start, "n_docs": entries[-1]["doc_end"] if entries else 0,
        "corpus": {"source": "in-memory", "sha256": None}, "shards": entries})
    return Store.open(folder)


def _run_parallel(jobs: list[Job], bar: tqdm) -> None:
    """Each job in a spawned process; the first worker that reports an error or dies without reporting
    (killed by the OOM killer, a crash) stops the others and fails the extraction."""
    ctx = torch.multiprocessing.get_context("spawn")
    procs, conns = [], []
    try:
        for job in jobs:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(job, send), name=f"extract-worker-{job.rank}", daemon=True)
            proc.start()
            send.close()  # the worker holds the only write end
            procs.append(proc)
            conns.append(recv)
        pending = set(range(len(jobs)))
        while pending:
            ready = set(wait([conns[r] for r in pending] + [procs[r].sentinel for r in pending]))
            for r in sorted(pending):
                if conns[r] not in ready and procs[r].sentinel not in ready:
                    continue
                final = _read_messages(conns[r], bar)
                if final is not None and final[0] == "error":
                    raise StoreError(f"extraction worker {r} ({jobs[r].where}) failed: {final[1]}; finished "
                                     f"shards are kept: rerun to resume")
                if final is not None:
                    pending.discard(r)
                elif procs[r].sentinel in ready or conns[r].closed:
                    procs[r].join(5)
                    raise StoreError(f"extraction worker {r} ({jobs[r].where}) died with exit code "
                                     f"{procs[r].exitcode}{_exit_reason(procs[r].exitcode)}; finished shards "
                                     f"are kept: rerun to resume")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(30)
            if proc.is_alive():  # ignored SIGTERM (or is stopped)
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()


def _read_messages(conn, bar: tqdm) -> tuple | None:
    """Read what a worker sent so far: token counts go to ``bar``; returns its final message, if it came.
    Closes ``conn`` at end of file (the worker is gone)."""
    while not conn.closed and conn.poll():
        try:
            msg = conn.recv()
        except EOFError:
            conn.close()
            return None
        if isinstance(msg, tuple):
            return msg
        bar.update(msg)
    return None


def _exit_reason(code: int | None) -> str:
    """What a negative exit code (killed by a signal) means, for the error message."""
    if code is None or code >= 0:
        return ""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f" (killed by {name}: out of memory?)" if -code == signal.SIGKILL else f" (killed by {name})"


# ---------------------------------------------------------------- reading


@dataclass
class Shard:
    """One shard in memory: ``token_start`` is the global index of its first token."""

    index: int
    token_start: int
    acts_TS: torch.Tensor
    token_ids_T: torch.Tensor
    doc_ids_T: torch.Tensor
    positions_T: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return self.acts_TS.shape[0]


@dataclass
class Store:
    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, folder: str | os.PathLike, expected_identity: dict | None = None) -> Store:
        """Open a finished store; checks that every shard is there with its recorded size, and that it was
        made from the run whose identity is ``expected_identity`` (if given)."""
        folder = Path(folder)
        path = folder / K.STORE_MANIFEST
        if not path.is_file():
            hint = " (the extraction did not finish: rerun it to resume)" if (folder / K.STORE_SHARDS_DIR).is_dir() \
                else ""
            raise StoreError(f"{folder} holds no activation store: {K.STORE_MANIFEST} is missing{hint}; "
                             f"make one with 2_lora_activation_interp/2.0_extract_lora_activations.py")
        manifest = read_json(path, REBUILT_BY[K.STORE_MANIFEST])
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: store format {manifest.get('format_version')}, this code reads "
                             f"{FORMAT_VERSION}; re-extract with --overwrite")
        for sh in manifest["shards"]:
            p = folder / sh["file"]
            if not p.is_file():
                raise StoreError(f"shard {p} is missing; rerun the extraction (it redoes only missing shards)")
            if p.stat().st_size != sh["bytes"]:
                raise StoreError(f"shard {p} is truncated or changed ({p.stat().st_size} bytes, manifest says "
                                 f"{sh['bytes']}); rerun the extraction (it redoes only that shard)")
        if expected_identity is not None:
            check_same_identity(expected_identity, manifest["identity"], f"activation store {folder}")
        return cls(folder, manifest)

    @property
    def sites(self) -> list[dict]:
        return self.manifest["sites"]

    @property
    def n_tokens(self) -> int:
        return self.manifest["n_tokens"]

    @property
    def identity(self) -> dict:
        return self.manifest["identity"]

    def site_names(self) -> list[str]:
        return [f"L{s['layer']}_{s['name']}" for s in self.sites]

    def token_starts(self) -> list[int]:
        return np.concatenate([[0], np.cumsum([s["n_tokens"] for s in self.manifest["shards"]])]).tolist()

    def shard(self, i: int) -> Shard:
        sh = self.manifest["shards"][i]
        p = self.folder / sh["file"]
        try:
            with safe_open(str(p), framework="pt") as f:
                t = {k: f.get_tensor(k) for k in SHARD_KEYS}
        except (SafetensorError, OSError) as e:
            raise StoreError(f"shard {p} cannot be read ({e}); it is truncated or corrupt: rerun the "
                             f"extraction (it redoes only that shard)") from None
        if t["acts_TS"].shape != (sh["n_tokens"], len(self.sites)):
            raise StoreError(f"shard {p} has shape {tuple(t['acts_TS'].shape)}, manifest says "
                             f"({sh['n_tokens']}, {len(self.sites)}); rerun the extraction with --overwrite")
        return Shard(i, self.token_starts()[i], t["acts_TS"], t["token_ids_T"], t["doc_ids_T"], t["positions_T"])

    def tensor(self, i: int, key: str) -> torch.Tensor:
        """One tensor of shard ``i`` (e.g. ``doc_ids_T``), without reading the others."""
        p = self.folder / self.manifest["shards"][i]["file"]
        try:
            with safe_open(str(p), framework="pt") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise StoreError(f"shard {p} cannot be read ({e}); it is truncated or corrupt: rerun the "
                             f"extraction (it redoes only that shard)") from None

    def shards(self) -> Iterator[Shard]:
        """Every shard in order, one in memory at a time."""
        for i in range(len(self.manifest["shards"])):
            yield self.shard(i)


def open_for_run(folder: Path, run_identity: dict) -> Store:
    """:meth:`Store.open` with the identity check, with the error phrased for a stage's user."""
    try:
        return Store.open(folder, run_identity)
    except RunError as e:
        raise StoreError(f"{e}; or pass the --run the store was made from") from None
