"""Stage 3 speed target: SAE training fed from the activation store vs. fed from one in-memory tensor.

Both sides train the same SAELens BatchTopK SAE (same settings, same initialisation, same steps) on the same
training tokens of a store, with SAELens' trainer:

- store: what 3.0 does end to end: the exact normalisation pass over the shards, then rank1.sae.split.iter_batches
  (shards in a seeded order, buffers permuted with a seed, fp16 rows converted per batch);
- memory: every training row loaded once into one float32 tensor beforehand (not timed), the normalisation
  from it, and batches drawn from a seeded permutation per epoch, the simplest way to feed SAELens.

Repeats alternate the order of the two sides; the medians of tokens/s give the ratio (target: store >= 0.9x
memory, the store must not be the bottleneck). FVU of both on the held-out tokens (inference SAE).

Usage:
    python bench/bench_sae.py                                  # tiny profile, the run's store
    python bench/bench_sae.py --steps 100 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch

from rank1.config import config_from_profile, results_dir
from rank1.sae.config import SaeConfig
from rank1.sae.split import heldout_split, input_statistics, iter_batches
from rank1.sae.train import activation_scaler, evaluate_sae, make_trainer, make_training_sae
from rank1.store import Store


def memory_batches(x_TS: torch.Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x_TS), generator=g)
        for i in range(0, len(perm) - batch + 1, batch):
            yield x_TS[perm[i:i + batch]]


def train(cfg: SaeConfig, provider, stats_fn, d_in: int, total: int):
    """Seconds of normalisation + training, and the trained inference SAE."""
    from sae_lens import SAE

    t0 = time.perf_counter()
    sae = make_training_sae(cfg, d_in, torch.device("cpu"))
    trainer = make_trainer(cfg, sae, provider(), total)
    trainer.activation_scaler = activation_scaler(cfg, stats_fn(), d_in)
    trainer.fit()
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return seconds, SAE.load_from_disk(tmp).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--store", default=None, help="store folder (default: the profile's tiny-r1-all store)")
    ap.add_argument("--run", default="tiny-r1-all", help="run whose store is read when --store is not given")
    ap.add_argument("--steps", type=int, default=300, help="training steps per side and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = Store.open(args.store or results_dir(args.profile, "lora_activations", args.run))
    cfg = config_from_profile(SaeConfig, "sae", args.profile)
    split = heldout_split(store, cfg.heldout_frac, cfg.batch_size, cfg.skip_first_tokens)
    d_in, B = len(store.sites), cfg.batch_size
    total = args.steps * B
    x_TS = torch.cat([sh.acts_TS[split.train_mask(sh)] for sh in store.shards()]).float()

    def tensor_stats():
        x = x_TS.double()
        mean = x.mean(0)
        return {"mean_S": mean, "std_S": x.std(0, correction=0), "mean_norm": x.norm(dim=1).mean()}

    sides = {
        "store": (lambda: iter_batches(store, split, B, cfg.seed, cfg.buffer_tokens),
                  lambda: input_statistics(store, split)),
        "memory": (lambda: memory_batches(x_TS, B, cfg.seed), tensor_stats),
    }
    print(f"{store.folder}: {split.n_train} training tokens x {d_in} adapters, {d_in * cfg.expansion} latents, "
          f"k={cfg.k}, {args.steps} steps of {B} ({total / split.n_train:.2f} epochs), "
          f"{torch.get_num_threads()} threads")
    rates: dict[str, list[float]] = {name: [] for name in sides}
    fvu: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            provider, stats_fn = sides[name]
            seconds, sae = train(cfg, provider, stats_fn, d_in, total)
            rates[name].append(total / seconds)
            fvu[name].append(evaluate_sae(sae, store, split)["fvu"])
            print(f"repeat {r} {name:6s}: {total / seconds:8.0f} tokens/s ({seconds:.1f} s), held-out FVU "
                  f"{fvu[name][-1]:.4f}", flush=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    ratio = med["store"] / med["memory"]
    print(f"median tokens/s: store {med['store']:.0f}, memory {med['memory']:.0f}; ratio {ratio:.3f} (target >= 0.9)")
    print(f"held-out FVU: store {statistics.median(fvu['store']):.4f}, memory {statistics.median(fvu['memory']):.4f}")
    if not math.isfinite(ratio):
        raise SystemExit("no measurement")


if __name__ == "__main__":
    main()
