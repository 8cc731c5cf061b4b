"""Stage 3.3.3: Figure 3, the donut of SAE feature categories: the categories' shares of activation mass on the
inner ring (labelled from 5%), their subcategories on the outer ring. A second donut with firing-count shares.

Reads category_densities.json (3.3.2) in results/<profile>/sae_autointerp/<run>/ and writes there
sae_feature_categories_donut.{pdf,png} (activation mass) and sae_feature_categories_donut_firing.{pdf,png}.

Usage:
    python 3_lora_sae/3.3_autointerp/3.3.3_create_donut_fig.py
    python 3_lora_sae/3.3_autointerp/3.3.3_create_donut_fig.py --measures mass
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import DonutConfig
from rank1.sae.stage import run_create_donut_fig


def main(cfg: DonutConfig) -> None:
    run_create_donut_fig(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(DonutConfig, "sae_donut", __doc__))
