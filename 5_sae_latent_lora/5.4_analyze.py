"""Stage 5.4: behaviour rates, sparsity of A and B, top read and write latents, figures.

Behaviour rate on the held-out prompts inside and outside the condition (greedy next token after the
teacher-forced trace and the answer tag is the marker; bootstrap CIs) for the base model, the standard LoRA
and every SAE-LoRA run; sparsity of the unit-norm directions (Hoyer, Gini, top-10 share) against their
initialisation and against l1 = 0; the top read and write latents with their top-activating store tokens;
the penalty comparison over --seeds (mean and spread; against l1 = 0, paired by seed, a verdict only where the
bootstrap CI of the mean difference excludes 0 and the sign-flip p is <= 0.05; "underpowered" with fewer than 6
seeds, "cannot tell" otherwise).
Writes results/<profile>/sae_lora/<name>/: sae_lora_results.json, sae_lora_sweep.{pdf,png},
sae_lora_directions.{pdf,png}, config.json, argv.json.

Usage:
    python 5_sae_latent_lora/5.4_analyze.py
"""

from rank1.artifacts import read_json
from rank1.config import parse_config
from rank1.constants import SAE_LORA_RESULTS
from rank1.logs import run_main
from rank1.sae_lora.config import SaeLoraConfig
from rank1.sae_lora.stage import run_analyze


def main(cfg: SaeLoraConfig) -> None:
    res = read_json(run_analyze(cfg) / SAE_LORA_RESULTS)
    rows = {**res["variants"], **res["sae_lora_runs"]}
    for name, r in rows.items():
        sp = r.get("sparsity")
        extra = f"  Hoyer A {sp['A']['hoyer']:.3f} B {sp['B']['hoyer']:.3f}" if sp else ""
        print(f"{name:24s} inside {r['inside']['rate']['value']:.2f}  outside {r['outside']['rate']['value']:.2f}"
              f"{extra}")
    for name, g in res["comparison"]["groups"].items():
        m = g["measures"]
        line = ", ".join(f"{k} {m[k]['mean']:.3g} [{m[k]['min']:.3g}, {m[k]['max']:.3g}]"
                         for k in ("inside_rate", "outside_rate", "final_ce", "hoyer_A"))
        verdicts = ", ".join(f"{k} {v}" for k, v in g.get("vs_l1_0", {}).items())
        print(f"{name} over seeds {g['seeds']}: {line}" + (f"; vs l1 = 0: {verdicts}" if verdicts else ""))
    if res["comparison"]["powered"] is False:
        print(f"the penalty comparison is underpowered: {res['comparison']['seeds_needed']} seeds are needed for any "
              "verdict (--seeds)")


if __name__ == "__main__":
    run_main(main, parse_config(SaeLoraConfig, "sae_lora", __doc__))
