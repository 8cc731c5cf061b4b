"""Stage 1: remove every adapter of one type at once (each projection; all MLP; all attention; all).

Reads the by-type family from 1.0's results when they were made from the same run and sample, and
measures it otherwise (KL(P_full || P_ablated) and CE change per assistant token, bootstrap CIs over
sequences). Removing all adapters gives the base model.

Usage:
    python 1_lora_adapter_ablations/lora_ablation_all_by_type.py                      # tiny profile, newest run
    python 1_lora_adapter_ablations/lora_ablation_all_by_type.py --run tiny-r1-all --n_samples 8

Writes ablation_all_by_type.json and lora_ablation_all_by_type.pdf/.png into
results/<profile>/ablations/<run>/.
"""

import logging

from rank1 import constants as K
from rank1.ablation.sweep import SAMPLE_KEYS, AblationConfig, existing_result, measure, output_dir, resolve_ablation_run
from rank1.ablation.plots import by_type
from rank1.artifacts import read_json, write_json
from rank1.config import parse_config
from rank1.logs import run_main

log = logging.getLogger("lora_ablation_all_by_type")
COPIED = ("run", "identity", "config", "kl_direction", "dce", "means", "sample", "sites", "type")


def main(cfg: AblationConfig) -> None:
    run = resolve_ablation_run(cfg)
    out = output_dir(cfg, run)
    if existing_result(out / K.BY_TYPE_JSON, run, cfg) is None:
        full = existing_result(out / K.ABLATION_JSON, run, cfg, ()) if not cfg.overwrite else None
        same_sample = full is not None and all(full["config"].get(k) == getattr(cfg, k) for k in SAMPLE_KEYS)
        if same_sample and "type" in full:
            write_json(out / K.BY_TYPE_JSON, {**{k: full[k] for k in COPIED}, "source": K.ABLATION_JSON})
            log.info("by-type ablations taken from %s", out / K.ABLATION_JSON)
        else:
            measure(cfg, ["type"], K.BY_TYPE_JSON, None, "by-type ablations")
    report = read_json(out / K.BY_TYPE_JSON)
    for name, m, lo, hi in zip(report["type"]["names"], *(report["type"]["kl"][k] for k in ("mean", "lo", "hi")),
                               strict=True):
        log.info("%-10s KL %.4g [%.4g, %.4g]", name, m, lo, hi)
    for path in by_type(report, out / K.BY_TYPE_STEM):
        log.info("wrote %s", path)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
