"""Stage 2.6 (top-k): top-k examples of the random-direction control (same features, polarities and
settings as 2.1).

Reads the store of 2.6 and writes results/<profile>/random_topk/<run>/ (same format as 2.1).

Usage:
    python 2_lora_activation_interp/2.6_precompute_random_topk.py
"""

from rank1.activations.config import TopKConfig
from rank1.activations.stage import run_precompute_random_topk
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: TopKConfig) -> None:
    print(f"top-k: {run_precompute_random_topk(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(TopKConfig, "topk", __doc__))
