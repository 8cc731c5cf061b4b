"""Stage 4.2: what differs between a correct and an incorrect attempt at the same problem?

N sampled rollouts per held-out problem (temperature, seed and s1 budget forcing as in the evaluation
stage; vLLM serves them when installed and asked for), each graded and saved. Problems with at least one
correct and one incorrect complete rollout are kept. Then, beyond the authors: the adapter scalars of
every rollout (teacher-forced; mean over the thinking and over its last tokens), and the same for the
matched base-model MLP neurons of stage 2.4; per mixed problem, correct minus incorrect; across problems,
a sign-flip permutation test per feature with Benjamini-Hochberg correction.

Usage:
    python 4_lora_interventions/4.2_counterfactual_rollouts.py                  # tiny profile, newest run
    python 4_lora_interventions/4.2_counterfactual_rollouts.py --n_problems 64 --n_samples 8 --backend vllm

Writes into results/<profile>/rollouts/<run>/: rollouts.jsonl (every rollout and grade),
rollout_activations.safetensors (per-rollout means, read by 4.3), counterfactual.json (tests) and
counterfactual_differences.{pdf,png}. Resumes per group of problems.
"""

from rank1.config import parse_config
from rank1.interventions.config import RolloutConfig
from rank1.interventions.stage import run_counterfactual_rollouts
from rank1.logs import run_main


def main() -> None:
    cfg = parse_config(RolloutConfig, "rollouts", __doc__)
    run_main(run_counterfactual_rollouts, cfg)


if __name__ == "__main__":
    main()
