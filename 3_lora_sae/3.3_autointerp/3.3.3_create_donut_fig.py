"""Stage 3.3.3: Figure 3, the donut of SAE feature categories: the categories' shares of activation mass on the
inner ring (labelled from 5%), their subcategories on the outer ring. A second donut with firing-count shares.

Reads category_densities.json (3.3.2) in results/<profile>/sae_autointerp/<run>/ and writes there
sae_feature_categories_donut.{pdf,png} (activation mass) and sae_feature_categories_donut_firing.{pdf,png}.

Usage:
    python 3_lora_sae/3.3_autointerp/3.3.3_create_donut_fig.py
    python 3_lora_sae/3.3_autointerp/3.3.3_create_donut_fig.py --measures mass
"""

from dataclasses import dataclass
from pathlib import Path

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import option, parse_config, results_dir
from rank1.logs import run_main
from rank1.runs import RunOptions, check_same_identity
from rank1.sae.categories import DENSITIES, MEASURES, CategoryError, plot_donut


@dataclass
class DonutConfig(RunOptions):
    autointerp: str | None = option("folder with category_densities.json; the figures go there too (default: "
                                    "results/<profile>/sae_autointerp/<run>)")
    measures: str = option(f"comma list of {MEASURES}: one donut each (mass is Figure 3)", "mass,firing")

    def __post_init__(self):
        bad = [m for m in self.measures.split(",") if m not in MEASURES]
        if bad or not self.measures:
            raise ValueError(f"--measures must be a comma list of {MEASURES}, got {self.measures!r}")


def main(cfg: DonutConfig) -> None:
    run = cfg.resolve_run()
    folder = Path(cfg.autointerp) if cfg.autointerp else results_dir(cfg.profile, K.SAE_AUTOINTERP_STAGE, run.name)
    path = folder / K.CATEGORY_DENSITIES_JSON
    if not path.is_file():
        raise CategoryError(f"{path} is missing: compute it first with {DENSITIES}")
    densities = read_json(path)
    check_same_identity(run.identity(), densities["identity"], f"category densities {path}")
    for measure in cfg.measures.split(","):
        stem = folder / (K.FIGURE3_STEM if measure == "mass" else f"{K.FIGURE3_STEM}_{measure}")
        for p in plot_donut(densities, measure, stem, f"{run.name}: SAE features by category"):
            print(f"figure: {p}")


if __name__ == "__main__":
    run_main(main, parse_config(DonutConfig, "sae_donut", __doc__))
