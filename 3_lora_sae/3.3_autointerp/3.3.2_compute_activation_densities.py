"""Stage 3.3.2: how much of the SAE's activity each feature category carries.

Per category of 3.3.1 (the paper's 7 top-level categories) and per subcategory: the activation mass (the sum of
each feature's activations over every token of the store, the authors' "activation density"), as a share of all
categorised features' mass; the firing-count share beside it (tokens each feature fires on); subcategory shares
within their category. Features without a category are reported apart.

Reads results/<profile>/sae_features/<run>/ (3.1) and categories.json in results/<profile>/sae_autointerp/<run>/
(3.3.1); writes category_densities.json there (with the config and the inputs it was computed from). No model.

Usage:
    python 3_lora_sae/3.3_autointerp/3.3.2_compute_activation_densities.py
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import DensitiesConfig
from rank1.sae.stage import run_compute_activation_densities


def main(cfg: DensitiesConfig) -> None:
    run_compute_activation_densities(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(DensitiesConfig, "sae_densities", __doc__))
