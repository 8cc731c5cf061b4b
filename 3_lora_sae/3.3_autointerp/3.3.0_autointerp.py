"""Stage 3.3.0: explain every SAE feature from its top examples and score each explanation on held-out examples
(detection and fuzzing balanced accuracy), with stage 2's explainers and scorers (``rank1.autointerp``: the
lexicon offline, or an LLM behind any OpenAI-compatible endpoint).

Settings: the profile's [autointerp] table (explainer, scorer, LLM endpoint) with [sae_autointerp] on top. The
authors showed an SAE feature's top 12 examples, at most 4 per document, +-16 tokens (and asked for no rating;
the 0/1/2 rating is recorded anyway). Categories come next, from 3.3.1. A killed run keeps every finished
feature: rerun the same command to continue (features whose explanation failed are retried; more than
--max_failed_share of them ends the run with an error line after writing its records, as in 2.2).

Reads results/<profile>/sae_features/<run>/ (3.1) and writes results/<profile>/sae_autointerp/<run>/:
explanations.jsonl, summary.json, config.json, argv.json (format in rank1/autointerp/run.py).

Usage:
    python 3_lora_sae/3.3_autointerp/3.3.0_autointerp.py
    python 3_lora_sae/3.3_autointerp/3.3.0_autointerp.py --explainer llm --scorer llm \\
        --llm_base_url http://localhost:8000/v1 --llm_model Qwen/Qwen2.5-72B-Instruct
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import AUTOINTERP_SECTIONS, AutointerpConfig
from rank1.sae.stage import run_autointerp


def main(cfg: AutointerpConfig) -> None:
    run_autointerp(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(AutointerpConfig, AUTOINTERP_SECTIONS, __doc__))
