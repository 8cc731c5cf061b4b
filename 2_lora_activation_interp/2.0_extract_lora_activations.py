"""Stage 2.0: record every adapter's scalar activation (lora_A of its projection's input) per token.

Runs the adapted model over a corpus in the training format and writes a sharded activation store
(results/<profile>/lora_activations/<run>/: manifest.json + shards/*.safetensors, see rank1/store.py).
A killed run resumes: finished shards are kept.

Usage:
    python 2_lora_activation_interp/2.0_extract_lora_activations.py                 # tiny profile, newest run
    python 2_lora_activation_interp/2.0_extract_lora_activations.py --run tiny-r1-all --num_procs 2
    python 2_lora_activation_interp/2.0_extract_lora_activations.py --profile paper --num_gpus 8
"""

from rank1.activations.config import ExtractConfig
from rank1.activations.stage import run_extract_lora_activations
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: ExtractConfig) -> None:
    print(f"store: {run_extract_lora_activations(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(ExtractConfig, "extract", __doc__))
