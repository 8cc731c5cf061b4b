"""Stage 2.3: the LoRA activation dashboard, a static HTML folder that opens from disk (no server).

Per layer, the seven adapters side by side (gate, up, down, then q, k, v, o): positive and negative top
examples as token heatmaps (red positive, blue negative, target token outlined, exact value on hover),
activation histogram and min/max/mean/std; cosines between the layer's A and B vectors that share a space;
across layers: activation std, norms of A and B, |cos| layer x layer. Reads only saved artifacts: the
top-k examples of 2.1 and the run's adapter weights.

Writes results/<profile>/lora_dashboard/<run>/index.html (+ core.js, lora.js, style.css, data/*.js).

Usage:
    python 2_lora_activation_interp/2.3_lora_activation_dashboard.py
    python 2_lora_activation_interp/2.3_lora_activation_dashboard.py --n_examples 20
"""

from dataclasses import dataclass
from pathlib import Path

from rank1 import constants as K
from rank1.config import option, parse_config, results_dir
from rank1.dashboard import write_dashboard
from rank1.activations.dashboard import build_payloads
from rank1.logs import run_main
from rank1.lora import adapter_vectors
from rank1.runs import RunOptions, check_same_identity
from rank1.store import check_writable
from rank1.topk import TopKResult


@dataclass
class DashboardConfig(RunOptions):
    topk: str | None = option("top-k folder of 2.1 (default: results/<profile>/lora_topk/<run>)")
    n_examples: int = option("top examples shown per feature (at most the k of 2.1)", 50)
    out: str | None = option("output folder (default: results/<profile>/lora_dashboard/<run>)")

    def __post_init__(self):
        if self.n_examples < 1:
            raise ValueError(f"--n_examples must be >= 1, got {self.n_examples}")


def main(cfg: DashboardConfig) -> None:
    run = cfg.resolve_run()
    src = Path(cfg.topk) if cfg.topk else results_dir(cfg.profile, "lora_topk", run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, "lora_dashboard", run.name)
    res = TopKResult.load(src)
    check_same_identity(run.identity(), res.meta["identity"], f"top-k examples {src}")
    check_writable(out.parent)
    index, pages = build_payloads(res, adapter_vectors(run.weights_dir),
                                  f"LoRA activations: {run.name}", cfg.n_examples)
    write_dashboard(out, index["title"], "lora.js", index, pages)
    print(f"dashboard: {out / K.DASHBOARD_INDEX}")


if __name__ == "__main__":
    run_main(main, parse_config(DashboardConfig, "dashboard", __doc__))
