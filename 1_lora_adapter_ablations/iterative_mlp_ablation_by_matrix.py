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

from rank1.ablation.config import AblationConfig
from rank1.ablation.stage import run_iterative_mlp_ablation
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AblationConfig) -> None:
    run_iterative_mlp_ablation(cfg)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
