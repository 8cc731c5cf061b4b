"""Stage 3.3.1: sort the explained SAE features into the paper's 7 top-level categories (verbatim:
computational_operations, symbolic_manipulation, variable_value_tracking, reasoning_flow_control,
domain_specific_patterns, relational_logical_operators, result_formulation), each with a subcategory.

``--categoriser lexicon`` (offline, deterministic): the dominant lexicon category of the feature's strong tokens,
mapped onto the 7 (rank1/autointerp/lexicon.py, LEXICON_TO_TOP_LEVEL); the lexicon category is the subcategory.
``--categoriser llm``: the LLM of [autointerp] reads the explanation and the peak tokens and picks one of the 7
(answers cached: a rerun sends nothing); the subcategory is the lexicon category when it lies inside the LLM's
choice. Features whose explanation failed stay uncategorised (counted in 3.3.2).

Reads results/<profile>/sae_features/<run>/ (3.1) and explanations.jsonl (3.3.0); writes categories.json beside
it (with the categoriser and the inputs it was made from).

Usage:
    python 3_lora_sae/3.3_autointerp/3.3.1_categorize.py
    python 3_lora_sae/3.3_autointerp/3.3.1_categorize.py --categoriser llm --llm_model ...
"""

import hashlib
import logging
import sys
from collections import Counter
from pathlib import Path

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json
from rank1.autointerp.categories import PAPER_TOP_LEVEL_SCHEME
from rank1.autointerp.stage import AutointerpConfig, build_components
from rank1.config import parse_config, results_dir
from rank1.logs import run_main
from rank1.sae.categories import EXPLAINER, CategoryError, categorize
from rank1.sae.features import load_run_features

log = logging.getLogger("3.3.1")
SECTIONS = ("autointerp", "sae_autointerp")


def main(cfg: AutointerpConfig) -> None:
    run, src, res, _ = load_run_features(cfg, cfg.topk)
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.SAE_AUTOINTERP_STAGE, run.name)
    explanations = folder / K.AUTOINTERP_RESULTS
    if not explanations.is_file():
        raise CategoryError(f"{explanations} is missing: explain the features first with {EXPLAINER}")
    cfg.categories = PAPER_TOP_LEVEL_SCHEME.name
    _, _, categoriser = build_components(cfg)
    inputs = {"features": str(src), "store_key": res.meta["store_key"],
              "sae_settings_key": res.meta["sae_settings_key"],
              "explanations_sha256": hashlib.sha256(explanations.read_bytes()).hexdigest(),
              "categoriser": categoriser.describe()}
    out = folder / K.CATEGORIES_JSON
    if out.is_file() and not cfg.overwrite and read_json(out).get("inputs") == inputs:
        log.info("%s is up to date with its inputs; nothing to do (--overwrite recomputes)", out)
    else:
        cats = categorize(res, explanations, categoriser, cfg.options(), cfg.options().concurrency)
        write_json(out, {**cats, "config": public_config(cfg), "argv": sys.argv, "identity": res.meta["identity"],
                         "inputs": inputs})
    d = read_json(out)
    counts = Counter(f["category"] for f in d["features"].values())
    for name in d["categories"]:
        print(f"{name:32s} {counts.get(name, 0):5d} features")
    print(f"uncategorised: {d['n_explained'] - len(d['features'])} of {d['n_explained']} explained features "
          f"(and {len(res.features) - d['n_explained']} not explained)\ncategories: {out}")


if __name__ == "__main__":
    run_main(main, parse_config(AutointerpConfig, SECTIONS, __doc__))
