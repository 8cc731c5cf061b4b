"""Stage 1.0: leave-one-layer-out, per-adapter and by-type ablations of a rank-1 LoRA run.

On a fixed, seeded sample of training-format sequences, every ablation (all adapters of one layer;
one adapter, giving the 7 x layers matrix; all adapters of one projection type, all MLP, all attention,
all) is compared with the full-adapter model on the assistant tokens: KL(P_full || P_ablated) and the
change in cross-entropy of the true next token, per token.

Usage:
    python 1_lora_adapter_ablations/1.0_generate_ablation_data.py                      # tiny profile, newest run
    python 1_lora_adapter_ablations/1.0_generate_ablation_data.py --run s1_peft/ckpts_lora/tiny-r1-all
    python 1_lora_adapter_ablations/1.0_generate_ablation_data.py --profile paper --families layer,type

Writes results/<profile>/ablations/<run>/: ablation_results.json (config, sample indices, run identity,
per-layer / per-adapter / by-type means with bootstrap CIs over sequences), ablation_per_token.safetensors
(per-token arrays), config.json, argv.json. A finished result is skipped (--overwrite recomputes); a
killed sweep continues from its last finished batch of sequences.
"""

from rank1.ablation.config import AblationConfig
from rank1.ablation.stage import run_generate_ablation_data
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AblationConfig) -> None:
    run_generate_ablation_data(cfg)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
