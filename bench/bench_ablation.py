"""Ablation sweep with and without the cached prefix, side by side on the same sample in one process.

Both sides run the same ablations through the same code (``rank1.ablation.sweep.run_sweep``); the naive side
runs every ablation from layer 0, the cached side keeps the residual stream entering each layer and
runs only the suffix. The two sides alternate (which goes first alternates too); the median wall
time of each is compared. Prints the ratio cached/naive (target <= 0.6; floor about 0.5, since the
average suffix is half the model and the LM head + KL run on both sides) and the largest absolute
difference of any per-token KL between the two (the results must be identical).

Usage:
    python bench/bench_ablation.py --run s1_peft/ckpts_lora/tiny-r1-all           # tiny profile
    python bench/bench_ablation.py --run RUN --n_samples 4 --families layer,adapter --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def matmul_floor(model: torch.nn.Module, plans, n_tokens: int, n_measured: int) -> float:
    """The cached/naive ratio if time were proportional to the multiply-adds of the linear layers. Both
    sides first run the full model once (the reference the KL compares with, which the cached side also
    keeps its prefix from); then each ablation runs layers ``start..L-1`` on every token (cached) or all L
    layers (naive), and the LM head on the measured tokens either way. Attention scores, norms and the KL
    are left out (small next to these on short sequences)."""
    from rank1.decoder import LayerRunner

    runner = LayerRunner(model)
    layer = sum(m.weight.numel() for m in runner.body.layers[0].modules()
                if isinstance(m, torch.nn.Linear) and m.weight.shape[0] > 1 and m.weight.shape[1] > 1)
    head = runner.lm_head.weight.numel()
    reference = runner.num_layers * layer * n_tokens + head * n_measured
    cached = reference + sum((runner.num_layers - p.start) * layer * n_tokens + head * n_measured for p in plans)
    naive = reference + len(plans) * (runner.num_layers * layer * n_tokens + head * n_measured)
    return cached / naive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--run", default=None, help="run folder or name (default: the profile's newest run)")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder instead of a run (with the "
                                                        "profile's model)")
    parser.add_argument("--n_samples", type=int, default=4, help="sequences of the profile's sample")
    parser.add_argument("--families", default="layer,adapter", help="ablation families to sweep")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (alternating)")
    args = parser.parse_args()

    from rank1.ablation.config import AblationConfig
    from rank1.ablation.stage import load_sample, resolve_ablation_run
    from rank1.ablation.sweep import plan_ablations, run_sweep
    from rank1.config import config_from_profile

    cfg = config_from_profile(AblationConfig, "ablation", args.profile, run=args.run, adapter=args.adapter,
                              n_samples=args.n_samples,
                              families=args.families)
    run = resolve_ablation_run(cfg)
    loaded = run.load(cfg.precision)
    _, items, _ = load_sample(cfg, run, loaded.tokenizer)
    plans = plan_ablations(loaded.sites, cfg.family_list())
    n_tokens = sum(len(it["input_ids"]) for it in items)
    print(f"run {run.name}: {len(plans)} ablations ({args.families}) on {len(items)} sequences ({n_tokens} tokens), "
          f"{torch.get_num_threads()} threads, repeats={args.repeats}")
    run_sweep(loaded, items[:1], plans[:1], cfg.cache_limit_mb, desc="warm-up")
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for r in range(args.repeats):
        for cached in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            results[cached] = run_sweep(loaded, items, plans, cfg.cache_limit_mb, cfg.token_chunk, cached,
                                        desc="cached" if cached else "naive")
            times[cached].append(time.perf_counter() - t0)
            print(f"  {'cached' if cached else 'naive ':6s} {times[cached][-1]:7.1f} s")
    naive, cached = statistics.median(times[False]), statistics.median(times[True])
    diff = float(np.abs(results[True].kl_AN - results[False].kl_AN).max())
    print(f"median: naive {naive:.1f} s, cached prefix {cached:.1f} s "
          f"(peak cache {results[True].peak_cache_bytes / 2**20:.0f} MiB)")
    n_measured = len(results[True].ce_full_N)
    print(f"time ratio cached/naive: {cached / naive:.3f}  (target <= 0.6; "
          f"matmul floor {matmul_floor(loaded.model, plans, n_tokens, n_measured):.3f})")
    print(f"max abs difference of per-token KL: {diff:.3g}  (target 0)")


if __name__ == "__main__":
    main()
