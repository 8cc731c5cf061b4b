"""Stage 4.3: can adapter activations predict whether a rollout is correct?

Reads 4.2's rollouts of held-out problems (never the adapter's training data) and their per-rollout
activation means: over the whole thinking and over its last tokens. Logistic regression scored out of
fold, with folds grouped by problem and the regularisation chosen inside each training fold (see
rank1/interventions/probes.py). Baselines through the same procedure: majority class (a constant: AUC 0.5), thinking
length alone, and the matched base-model MLP neurons. ROC-AUC with 95% CIs from resampling problems, and
the probe's AUC minus each baseline's with its CI; the log says plainly whether the probe beats them.

Usage:
    python 4_lora_interventions/4.3_correctness_probes.py                 # tiny profile, newest run
    python 4_lora_interventions/4.3_correctness_probes.py --n_splits 10

Writes probes.json and probe_auc.{pdf,png} into results/<profile>/probes/<run>/.
"""

from rank1.config import parse_config
from rank1.interventions.config import ProbeConfig
from rank1.interventions.stage import run_correctness_probes
from rank1.logs import run_main


def main() -> None:
    cfg = parse_config(ProbeConfig, "probes", __doc__)
    run_main(run_correctness_probes, cfg)


if __name__ == "__main__":
    main()
