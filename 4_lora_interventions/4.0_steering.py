"""Stage 4.0: can the adapter directions steer reasoning, and from what magnitude on?

Two interventions from the first generated token on (see rank1/interventions/steering.py): (a) offset an adapter's
own scalar activation by m natural standard deviations (std over the stage-2 corpus, from 2.1's top-k
artifact), for any projection; (b) add m x (mean residual norm at its layer) x unit(B) after the layer,
for o_proj / down_proj. Each magnitude is swept per adapter on held-out problems; measured against the
unsteered model: next-token KL(P_unsteered || P_steered) teacher-forced on the unsteered generation,
marker rate ("Wait", "verify", "check" per 100 thinking tokens), accuracy, thinking length, repetition.
The onset is the smallest |m| whose mean KL exceeds --kl_threshold, with a bootstrap CI over problems; beside
it, the magnitude the authors' recipe (50 x sqrt(mean MLP-output norm) x raw B) corresponds to in the same
units. The control (--random_control, on by default; --random_seed): every setting again with B replaced by a
seeded random vector of B's norm at the same site, so an onset can be told apart from what any direction of
that size does. It doubles the steered generations and KL passes.

Usage:
    python 4_lora_interventions/4.0_steering.py                          # tiny profile, newest run
    python 4_lora_interventions/4.0_steering.py --layers 4,15,25 --scalar_projections down_proj,up_proj
    python 4_lora_interventions/4.0_steering.py --no-random_control     # the LoRA directions only

Writes into results/<profile>/steering/<run>/: steering.json, steering_generations.jsonl (a few per
setting), steering_curves.{pdf,png}. Resumes per setting.
"""

from rank1.config import parse_config
from rank1.interventions.config import SteeringConfig
from rank1.interventions.stage import run_steering
from rank1.logs import run_main


def main() -> None:
    cfg = parse_config(SteeringConfig, "steering", __doc__)
    run_main(run_steering, cfg)


if __name__ == "__main__":
    main()
