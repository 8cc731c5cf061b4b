"""Stage 2.6 (store): the random-direction control of Figure 2. At every site the run adapts (same layers and
projections), a direction drawn from a seeded Gaussian and scaled to the norm of the trained lora_A there,
with lora_B = 0, so the model is the base model; its scalars are read by the same capture as 2.0's, over
the first --random_max_tokens tokens of the same corpus (0: the same tokens as 2.0).

Writes results/<profile>/random_activations/<run>/ (the store format of 2.0, kind "random"; the control
adapter and its record in control_adapter/).

Usage:
    python 2_lora_activation_interp/2.6_extract_random_activations.py
    python 2_lora_activation_interp/2.6_extract_random_activations.py --random_seed 1 --overwrite
"""

from rank1.activations.config import ExtractConfig
from rank1.activations.stage import extract_random_control
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: ExtractConfig) -> None:
    print(f"store: {extract_random_control(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(ExtractConfig, "extract", __doc__))
