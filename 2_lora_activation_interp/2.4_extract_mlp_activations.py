"""Stage 2.4: the MLP-neuron baseline store: base-model neurons (SwiGLU product act(gate) * up, the
input of down_proj, adapter disabled), sampled at random per layer with a fixed seed, as many per layer
as the run has adapters per layer, over the same corpus as 2.0.

Writes results/<profile>/mlp_activations/<run>/ (same format as the LoRA store; sites are neurons).

Usage:
    python 2_lora_activation_interp/2.4_extract_mlp_activations.py
    python 2_lora_activation_interp/2.4_extract_mlp_activations.py --neurons_per_layer 14 --neuron_seed 1
"""

from rank1.activations.config import ExtractConfig
from rank1.activations.stage import run_extract_mlp_activations
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: ExtractConfig) -> None:
    print(f"store: {run_extract_mlp_activations(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(ExtractConfig, "extract", __doc__))
