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

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json
from rank1.config import option, parse_config, results_dir
from rank1.logs import run_main
from rank1.runs import RunOptions
from rank1.sae.categories import category_densities, feature_table, read_categories
from rank1.sae.features import load_run_features

log = logging.getLogger("3.3.2")


@dataclass
class DensitiesConfig(RunOptions):
    features: str | None = option("features folder of 3.1 (default: results/<profile>/sae_features/<run>)")
    autointerp: str | None = option("folder with categories.json; the output goes there too (default: "
                                    "results/<profile>/sae_autointerp/<run>)")


def main(cfg: DensitiesConfig) -> None:
    run, src, res, _ = load_run_features(cfg, cfg.features)
    folder = Path(cfg.autointerp) if cfg.autointerp else results_dir(cfg.profile, K.SAE_AUTOINTERP_STAGE, run.name)
    categories = read_categories(folder, [f["name"] for f in res.features])
    inputs = {"features": str(src), "store_key": res.meta["store_key"],
              "sae_settings_key": res.meta["sae_settings_key"],
              "categories_sha256": hashlib.sha256((folder / K.CATEGORIES_JSON).read_bytes()).hexdigest()}
    out = folder / K.CATEGORY_DENSITIES_JSON
    if out.is_file() and read_json(out).get("inputs") == inputs:
        log.info("%s is up to date with its inputs; nothing to do", out)
    else:
        densities = category_densities(feature_table(res.features), categories)
        write_json(out, {"config": public_config(cfg), "argv": sys.argv, "identity": res.meta["identity"],
                         "inputs": inputs, "n_features": len(res.features), **densities})
    d = read_json(out)
    for name, c in d["categories"].items():
        print(f"{name:32s} {c['n_features']:5d} features  mass {c['mass_share']:6.1%}  firing {c['firing_share']:6.1%}")
    print(f"uncategorised: {d['uncategorised']['n_features']} features ({d['uncategorised']['mass_share_of_all']:.1%} "
          f"of all mass)\ndensities: {out}")


if __name__ == "__main__":
    run_main(main, parse_config(DensitiesConfig, "sae_densities", __doc__))
