"""Stage 2.2: explain every LoRA feature (adapter x polarity) from its top examples, rate it 0 monosemantic /
1 broad but consistent / 2 polysemantic, categorise it, and score the explanation on held-out examples
(detection and fuzzing balanced accuracy).

Explainer, scorer and categoriser: the lexicon (offline, deterministic; the tiny profile) or an LLM behind any
OpenAI-compatible endpoint (the paper profile; key from the environment variable named by --llm_auth_env,
answers cached under <cache>/autointerp). A killed or failed run keeps every finished feature: rerun the
same command to continue; it also retries the features whose explanation failed (a malformed answer, a refused
request). When more than --max_failed_share (default 0.1) of the attempted features failed, the run writes its
records and then ends with an error line (exit 2) naming the most common failure.

Reads results/<profile>/lora_topk/<run>/ (2.1) and writes results/<profile>/lora_autointerp/<run>/:
explanations.jsonl, summary.json, config.json, argv.json (format in rank1/autointerp/run.py).

Usage:
    python 2_lora_activation_interp/2.2_run_lora_autointerp.py
    python 2_lora_activation_interp/2.2_run_lora_autointerp.py --explainer llm --scorer llm --categoriser llm \\
        --llm_base_url http://localhost:8000/v1 --llm_model Qwen/Qwen2.5-72B-Instruct
"""

from functools import partial

from rank1.activations.dashboard import refresh_after_autointerp
from rank1.autointerp.stage import AutointerpConfig, run_stage
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AutointerpConfig) -> None:
    # once written, the explanations appear on the LoRA dashboard of 2.3 (where it exists)
    print(f"autointerp: {run_stage(cfg, 'lora', after=partial(refresh_after_autointerp, 'lora', cfg.profile))}")


if __name__ == "__main__":
    run_main(main, parse_config(AutointerpConfig, "autointerp", __doc__))
