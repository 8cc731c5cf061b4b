"""Stage 2.3 (analysis): how interpretable are the LoRA features? Shares of monosemantic / broad but
consistent / polysemantic with 95% bootstrap CIs (10,000 resamples), overall, by layer bin (--layer_bin 8
as the authors did on 64 layers; 0: thirds of the network), by projection and by polarity; the held-out
detection and fuzzing scores; category shares. --kind mlp gives the same for the MLP-neuron baseline.

Reads results/<profile>/<kind>_autointerp/<run>/ (2.2 / 2.7) and writes
results/<profile>/<kind>_interpretability/<run>/: interpretability.json, interpretability.{pdf,png}.

Usage:
    python 2_lora_activation_interp/2.3_analyze_lora_interpretability.py
    python 2_lora_activation_interp/2.3_analyze_lora_interpretability.py --kind mlp
"""

from rank1.activations.config import InterpretabilityConfig
from rank1.activations.stage import run_analyze_interpretability
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: InterpretabilityConfig) -> None:
    print(f"interpretability: {run_analyze_interpretability(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(InterpretabilityConfig, "interpretability", __doc__))
