"""Stage 4.1: which adapters drive a prediction? Gradient x activation of a target with respect to every
adapter's scalar at every position, checked against actually zeroing activations.

The sequence is a held-out problem with its gold trace, up to the forced ``Answer:``; the target is the
logit of the gold answer's first token there minus the largest other logit (``--target logit_diff``,
the default: a confident model's log-prob sits near 0) or its log-prob (``logprob``). With ``--freeze``
(default, the authors' linearisation) RMSNorm scales and attention patterns are constants; the plain
gradient is computed as well for the check. attr = act x grad predicts the change of the target when
that activation is zeroed (-attr); the check zeroes the largest and some random (adapter, position)
pairs, and whole adapters, and reports Pearson r and sign agreement of prediction and actual change.

Usage:
    python 4_lora_interventions/4.1_attribution.py                       # tiny profile, newest run
    python 4_lora_interventions/4.1_attribution.py --n_problems 32 --target logit_diff --no-freeze

Writes into results/<profile>/attribution/<run>/: attribution.json (top adapters per problem, agreement),
attribution.safetensors (adapters x positions per problem), attribution_by_adapter.{pdf,png}, and the
dashboard html/index.html (adapters x positions heatmaps, tokens escaped). Resumes per problem.
"""

from rank1.config import parse_config
from rank1.interventions.config import AttributionConfig
from rank1.interventions.stage import run_attribution
from rank1.logs import run_main


def main() -> None:
    cfg = parse_config(AttributionConfig, "attribution", __doc__)
    run_main(run_attribution, cfg)


if __name__ == "__main__":
    main()
