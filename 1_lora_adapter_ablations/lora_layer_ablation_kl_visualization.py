"""Stage 1: where in a trace an ablation matters, from 1.0's per-token KL (no model is loaded).

Draws the per-token KL(P_full || P_ablated) along one sample sequence for the layers whose removal
costs most, with the predicted tokens on the axis, and summarises the whole sample by class of the
predicted token ("Wait", answer markers, digits, operators, newlines, other): mean KL per class and
each class's share of the KL mass next to its share of the tokens.

Usage:
    python 1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py                # tiny profile
    python 1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py --viz_sequence 3 --viz_top 4

Writes layer_ablation_token_kl.json and lora_layer_ablation_kl_visualization.pdf/.png beside
ablation_results.json.
"""

from rank1.ablation.config import AblationConfig
from rank1.ablation.stage import run_layer_ablation_kl_visualization
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AblationConfig) -> None:
    run_layer_ablation_kl_visualization(cfg)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
