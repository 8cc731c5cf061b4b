"""Stage 2.8: LoRA directions vs. MLP neurons (the paper's Figure 2). Monosemantic (and broad, polysemantic)
shares of both sides with 95% bootstrap CIs and a chi-square test on the 2 x 3 table; held-out detection
and fuzzing scores compared with a Mann-Whitney test; category enrichment (share of a category among LoRA
features over its share among MLP neurons, two-sample bootstrap CI) for every category, beside the paper's
8.5x "Mathematical Operators", 3.0x "Answer and Solution Markers", 2.2x "Instruction and Procedural Markers".

Both sides must come from the same run and corpus and be explained with the same settings (checked).
Reads results/<profile>/{lora,mlp}_autointerp/<run>/ and writes results/<profile>/lora_vs_mlp/<run>/:
lora_vs_mlp.json, lora_vs_mlp_interpretability.{pdf,png}.

Usage:
    python 2_lora_activation_interp/2.8_compare_lora_mlp.py
"""

from rank1.activations.config import CompareConfig
from rank1.activations.stage import run_compare_lora_mlp
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: CompareConfig) -> None:
    print(f"LoRA vs. MLP: {run_compare_lora_mlp(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(CompareConfig, "lora_vs_mlp", __doc__))
