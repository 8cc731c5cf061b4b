"""Stage 1: greedily remove the least important MLP adapter, one at a time, until all are gone.

Each step scores every remaining MLP adapter (gate, up, down of every layer) by the KL(P_full ||
P_ablated) its removal would give on top of those already removed, and removes the smallest. The
curve says how many adapters carry most of the MLP adapters' effect (``carry_90``: the fewest adapters
that, kept alone, leave at most 10% of the all-MLP KL). Scoring uses the cached prefix; with
--greedy_rescore_every n > 1 scores are reused for n removals (the tracked KL stays exact); the JSON
states the cost (suffix runs, decoder-layer calls) next to exact greedy's n(n+1)/2 scorings.

Usage:
    python 1_lora_adapter_ablations/iterative_mlp_ablation_by_matrix.py                 # tiny profile
    python 1_lora_adapter_ablations/iterative_mlp_ablation_by_matrix.py --greedy_rescore_every 1 --greedy_samples 16

Writes iterative_mlp_ablation.json and iterative_mlp_ablation_by_matrix.pdf/.png into
results/<profile>/ablations/<run>/.
"""

import logging

import numpy as np

from rank1 import constants as K
from rank1.ablation.sweep import (
    KL_DIRECTION,
    MEAN_MEANING,
    SAMPLE_KEYS,
    AblationConfig,
    estimates,
    existing_result,
    load_sample,
    output_dir,
    resolve_ablation_run,
)
from rank1.ablation.greedy import carry_fraction, greedy_removal
from rank1.ablation.plots import iterative
from rank1.artifacts import read_json, write_json, write_run_metadata
from rank1.config import parse_config
from rank1.logs import run_main
from rank1.runs import RunError

log = logging.getLogger("iterative_mlp_ablation_by_matrix")
GREEDY_KEYS = (*SAMPLE_KEYS, "greedy_samples", "greedy_rescore_every")


def main(cfg: AblationConfig) -> None:
    run = resolve_ablation_run(cfg)
    out = output_dir(cfg, run)
    path = out / K.ITERATIVE_JSON
    if existing_result(path, run, cfg, GREEDY_KEYS) is not None:
        log.info("%s exists; skipping (--overwrite recomputes)", path)
    else:
        loaded = run.load(cfg.precision)
        indices, items, source = load_sample(cfg, run, loaded.tokenizer)
        n_seq = min(cfg.greedy_samples or len(items), len(items))
        sites = loaded.sites
        candidates = [i for i, s in enumerate(sites) if s.is_mlp]
        if not candidates:
            raise RunError(f"{run.name} has no MLP adapters to remove")
        res = greedy_removal(loaded, items[:n_seq], candidates, cfg.greedy_rescore_every, cfg.token_chunk)
        curve = estimates(res.kl_SK, cfg.n_resamples)
        n = len(candidates)
        report = {
            "run": run.name, "identity": run.identity(), "config": cfg, "kl_direction": KL_DIRECTION,
            "means": MEAN_MEANING, "sample": {"source": source, **cfg.sample_key(), "indices": indices[:n_seq]},
            "n_sequences": n_seq, "n_candidates": n,
            "order": [{"name": f"L{sites[c].layer}.{sites[c].proj}", "layer": sites[c].layer, "proj": sites[c].proj,
                       "kl_after": curve["mean"][k + 1]} for k, c in enumerate(res.order)],
            "curve": {"removed": list(range(n + 1)), "kl": curve},
            "carry_90": carry_fraction(np.asarray(curve["mean"])),
            "scoring_rounds": [[[f"L{sites[c].layer}.{sites[c].proj}", v] for c, v in r] for r in res.scores],
            "cost": {"seconds": res.seconds, "suffix_runs": res.suffix_runs,
                     "exact_greedy_suffix_runs": n * (n + 1) // 2,
                     "rescore_every": cfg.greedy_rescore_every, "decoder_layer_calls": res.layer_forwards,
                     "naive_decoder_layer_calls": (n * (n + 1) // 2 + n + 1) * len({s.layer for s in sites})},
        }
        write_run_metadata(out, cfg, {"identity": run.identity()})
        write_json(path, report)
        log.info("%d MLP adapters removed in %.0f s (%d suffix runs; exact greedy would score %d)", n, res.seconds,
                 res.suffix_runs, n * (n + 1) // 2)
    report = read_json(path)
    log.info("first removed: %s; last removed: %s; %d adapters carry 90%% of the all-MLP KL",
             ", ".join(o["name"] for o in report["order"][:5]), ", ".join(o["name"] for o in report["order"][-5:]),
             report["carry_90"])
    for p in iterative(report, out / K.ITERATIVE_STEM):
        log.info("wrote %s", p)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
