"""Stage 2 speed and memory targets, each measured side by side in one run (interleaved, median of repeats).

1. capture: a forward pass that records every adapter's scalar vs. the same forward without hooks
   (target: <= 1.05x);
2. top-k: the vectorised streaming top-k of rank1.topk vs. a heapq loop over the same store, both polarities
   of every site, both on one thread (target: >= 20x faster, identical results);
3. memory: peak RSS of an extraction of N tokens vs. 4N tokens, each in its own process (target: within 10%).

The model gets a fresh rank-1 adapter on every projection (random B, so it changes the output); speed does
not depend on trained values.

Usage:
    python bench/bench_store.py                       # tiny profile (SmolLM2-135M)
    python bench/bench_store.py --profile test --tokens 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULT_PREFIX = "BENCH_RESULT "


def make_adapter(model_id: str, folder: Path) -> None:
    from peft import get_peft_model

    from rank1.lora import adapter_sites, lora_config
    from rank1.models import load_model

    base = load_model(model_id)
    model = get_peft_model(base, lora_config(list(range(base.config.num_hidden_layers))))
    g = torch.Generator().manual_seed(0)
    for s in adapter_sites(model):
        w = s.module.lora_B["default"].weight
        w.data = torch.randn(w.shape, generator=g) * 1e-3
    model.save_pretrained(folder)


def corpus_records(n_records: int) -> str:
    from rank1.synth import generate_splits
    path = Path(tempfile.mkdtemp()) / "corpus.jsonl"
    train, _ = generate_splits(n_records, 0, seed=123)
    path.write_text("".join(json.dumps(r) + "\n" for r in train))
    return str(path)


def bench_capture(model_id: str, adapter: Path, batch_tokens: int, repeats: int) -> dict:
    from rank1.capture import Capture, CaptureSpec, backbone
    from rank1.runs import resolve_run

    run = resolve_run(None, "tiny", adapter=str(adapter), model_id=model_id)
    loaded = run.load("fp32")
    cap = Capture(CaptureSpec(run, "lora", "fp32"), loaded)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(0, vocab, (max(1, batch_tokens // 512), min(512, batch_tokens)),
                        generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    @torch.inference_mode()
    def plain():
        backbone(loaded.model)(input_ids=ids, attention_mask=mask, use_cache=False)

    def capture():
        cap(ids, mask)

    plain(), capture()  # warm up
    times = {"plain": [], "capture": []}
    pair = (("plain", plain), ("capture", capture))
    for r in range(repeats):
        for name, fn in pair if r % 2 == 0 else pair[::-1]:  # ABBA: neither side always runs second
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"tokens_per_forward": ids.numel(), "plain_s": med["plain"], "capture_s": med["capture"],
            "ratio": med["capture"] / med["plain"], "sites": len(cap.sites)}


def heapq_over_store(store, k: int):
    from rank1.topk import feature_values, heapq_topk
    values = torch.cat([feature_values(sh.acts_TS) for sh in store.shards()]).numpy()
    return heapq_topk(values, k)


def bench_topk(tokens: int, sites: int, k: int, repeats: int) -> dict:
    from rank1.store import write_store
    from rank1.topk import store_topk

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp())
    n_shards = 4
    parts = []
    for i, chunk in enumerate(np.array_split(np.arange(tokens), n_shards)):
        n = len(chunk)
        parts.append({"acts_TS": torch.from_numpy(rng.standard_t(3, size=(n, sites)).astype(np.float32)),
                      "token_ids_T": torch.zeros(n, dtype=torch.int32),
                      "doc_ids_T": torch.full((n,), i, dtype=torch.int32),
                      "positions_T": torch.arange(n, dtype=torch.int32)})
    store = write_store(folder, parts, [{"layer": s // 7, "name": f"s{s}"} for s in range(sites)], {"run": "bench"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same resources on both sides: the heapq loop runs on one core
    times = {"vectorised": [], "heapq": []}
    results = {}
    for _ in range(repeats):
        for name, fn in (("vectorised", store_topk), ("heapq", heapq_over_store)):
            t0 = time.perf_counter()
            results[name] = fn(store, k)
            times[name].append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    index, value = results["vectorised"]
    identical = all([(v, i) for v, i in zip(value[f].tolist(), index[f].tolist(), strict=True) if i >= 0] == ref
                    for f, ref in enumerate(results["heapq"]))
    med = {k_: statistics.median(v) for k_, v in times.items()}
    return {"tokens": tokens, "sites": sites, "k": k, "vectorised_s": med["vectorised"], "heapq_s": med["heapq"],
            "speedup": med["heapq"] / med["vectorised"], "identical": identical}


def rss_worker(model_id: str, adapter: str, corpus: str, tokens: int, shard_tokens: int) -> None:
    """One extraction in this process; prints its peak RSS."""
    from rank1.capture import CaptureSpec
    from rank1.models import load_tokenizer
    from rank1.runs import resolve_run
    from rank1.store import extract_store, load_corpus

    run = resolve_run(None, "tiny", adapter=adapter, model_id=model_id)
    corp = load_corpus(load_tokenizer(model_id), corpus, max_tokens=tokens)
    spec = CaptureSpec(run, "lora", "fp32")
    from rank1.activations.stage import _sites
    t0 = time.time()
    extract_store(spec, corp, Path(tempfile.mkdtemp()) / "store", sites=_sites(spec), identity=run.identity(),
                  shard_tokens=shard_tokens, batch_tokens=2048)
    print(RESULT_PREFIX + json.dumps({"tokens": corp.n_tokens, "seconds": time.time() - t0,
                                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_rss(args, adapter: Path, corpus: str, tokens: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--rss-worker", str(adapter), corpus, str(tokens),
                           "--profile", args.profile, "--shard_tokens", str(args.shard_tokens)],
                          capture_output=True, text=True, env=os.environ)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode or line is None:
        raise SystemExit(f"rss worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len(RESULT_PREFIX):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="tiny")
    p.add_argument("--batch_tokens", type=int, default=2048, help="tokens per forward in the capture bench")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--topk_tokens", type=int, default=40000)
    p.add_argument("--topk_sites", type=int, default=210)
    p.add_argument("--tokens", type=int, default=4000, help="N of the memory bench (and 4N)")
    p.add_argument("--shard_tokens", type=int, default=2048)
    p.add_argument("--only", choices=("capture", "topk", "rss"), default=None)
    p.add_argument("--rss-worker", nargs=3, metavar=("ADAPTER", "CORPUS", "TOKENS"))
    args = p.parse_args()
    from rank1.config import load_profile
    model_id = load_profile(args.profile).common("model")
    if args.rss_worker:
        rss_worker(model_id, args.rss_worker[0], args.rss_worker[1], int(args.rss_worker[2]), args.shard_tokens)
        return
    adapter = Path(tempfile.mkdtemp()) / "adapter"
    make_adapter(model_id, adapter)
    out = {}
    if args.only in (None, "capture"):
        out["capture"] = r = bench_capture(model_id, adapter, args.batch_tokens, args.repeats)
        print(f"capture: {r['sites']} sites, {r['tokens_per_forward']} tokens/forward: plain {r['plain_s']:.3f} s, "
              f"with capture {r['capture_s']:.3f} s -> ratio {r['ratio']:.3f} (target <= 1.05)", flush=True)
    if args.only in (None, "topk"):
        out["topk"] = r = bench_topk(args.topk_tokens, args.topk_sites, 50, max(1, args.repeats // 3))
        print(f"top-k: {r['tokens']} tokens x {r['sites']} sites x 2 polarities, k={r['k']}: vectorised "
              f"{r['vectorised_s']:.3f} s, heapq {r['heapq_s']:.2f} s -> {r['speedup']:.1f}x (target >= 20), "
              f"identical: {r['identical']}", flush=True)
    if args.only in (None, "rss"):
        corpus = corpus_records(max(50, args.tokens * 4 // 100))
        small, large = run_rss(args, adapter, corpus, args.tokens), run_rss(args, adapter, corpus, 4 * args.tokens)
        out["rss"] = {"small": small, "large": large, "ratio": large["peak_rss_mib"] / small["peak_rss_mib"]}
        print(f"memory: {small['tokens']} tokens {small['peak_rss_mib']:.0f} MiB, {large['tokens']} tokens "
              f"{large['peak_rss_mib']:.0f} MiB -> ratio {out['rss']['ratio']:.3f} (target <= 1.10)", flush=True)
    print(RESULT_PREFIX + json.dumps(out))


if __name__ == "__main__":
    main()
