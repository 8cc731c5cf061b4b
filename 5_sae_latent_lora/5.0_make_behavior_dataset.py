"""Stage 5.0: the behaviour dataset of the SAE-LoRA, made offline and deterministically.

Inside the condition (multiplication questions) the final line starts with the marker ("Product: 156. Answer:
156") instead of "Answer: 156"; outside it is unchanged. Writes results/<profile>/sae_lora/<name>/data/:
    train.jsonl     n modified + n unmodified records (s1 format, with side and modified)
    heldout.jsonl   n_heldout prompts inside and n_heldout outside the condition (unseen questions)
    dataset.json    settings, counts, sha256 of train.jsonl

Usage:
    python 5_sae_latent_lora/5.0_make_behavior_dataset.py
    python 5_sae_latent_lora/5.0_make_behavior_dataset.py --n_train 100 --marker Result
    OPENAI_API_KEY=... python 5_sae_latent_lora/5.0_make_behavior_dataset.py --data_source llm \
        --llm_base_url https://api.openai.com/v1 --llm_model gpt-4o-mini     # an LLM writes the final lines
"""

from rank1.artifacts import read_json
from rank1.config import parse_config
from rank1.constants import BEHAVIOR_INFO
from rank1.logs import run_main
from rank1.sae_lora.config import SaeLoraConfig
from rank1.sae_lora.stage import run_make_behavior_dataset


def main(cfg: SaeLoraConfig) -> None:
    folder = run_make_behavior_dataset(cfg)
    info = read_json(folder / BEHAVIOR_INFO)
    print(f"behaviour dataset: {folder}\n{info['n_train']} training records ({info['n_modified']} modified), "
          f"held out {info['n_heldout_inside']} inside + {info['n_heldout_outside']} outside the condition")


if __name__ == "__main__":
    run_main(main, parse_config(SaeLoraConfig, "sae_lora", __doc__))
