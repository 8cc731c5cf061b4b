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

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import AUTOINTERP_SECTIONS, AutointerpConfig
from rank1.sae.stage import run_categorize


def main(cfg: AutointerpConfig) -> None:
    run_categorize(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(AutointerpConfig, AUTOINTERP_SECTIONS, __doc__))
