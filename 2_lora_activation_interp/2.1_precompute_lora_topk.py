"""Stage 2.1: top-k examples of every LoRA feature (adapter x polarity), with contexts, activation
quantiles, histograms, and scoring samples (deciles + non-activating windows, disjoint from the top-k).

Reads the store of 2.0 (checked to come from the same run) and writes
results/<profile>/lora_topk/<run>/: topk.safetensors, features.json, vocab.json, config.json
(format in rank1/topk.py; read it back with rank1.topk.TopKResult.load).

Usage:
    python 2_lora_activation_interp/2.1_precompute_lora_topk.py
    python 2_lora_activation_interp/2.1_precompute_lora_topk.py --k 100 --context 16
"""

from rank1.activations.config import TopKConfig
from rank1.activations.stage import run_precompute_lora_topk
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: TopKConfig) -> None:
    print(f"top-k: {run_precompute_lora_topk(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(TopKConfig, "topk", __doc__))
