"""Held-out report of a training run: loss and exact-match accuracy, base model vs. trained model.

Usage:
    python s1_peft/eval_heldout.py --profile tiny                 # the profile's default run
    python s1_peft/eval_heldout.py --run s1_peft/ckpts_lora/tiny-r1-L20-30s1 --n 32

Writes <run>/eval_heldout.json. The base model is the same loaded weights with the adapter disabled.
"""

import logging
from dataclasses import dataclass, field

from rank1 import constants as K
from rank1.artifacts import write_json
from rank1.config import data_dir, parse_config
from rank1.data import load_reasoning_records
from rank1.evaluate import evaluate_model
from rank1.logs import run_main
from rank1.models import load_model
from rank1.runs import PRECISIONS, resolve_run

log = logging.getLogger("s1_peft.eval_heldout")


@dataclass
class EvalConfig:
    profile: str = field(default="tiny", metadata={"help": "profile the defaults came from"})
    run: str | None = field(default=None, metadata={"help": "run folder (path or name); default: "
                                                    "the run 0_train_lora.sh makes for this profile"})
    eval_data: str = field(default="synthetic", metadata={"help": "'synthetic' (data/<profile>/"
                                                          "eval.jsonl) or an s1-format file"})
    n: int = field(default=0, metadata={"help": "evaluate the first n records (0: all)"})
    max_new_tokens: int = field(default=128, metadata={"help": "generation budget per question"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass"})
    block_size: int = field(default=512, metadata={"help": "truncation for the loss"})
    precision: str = field(default="auto", metadata={"help": f"one of {PRECISIONS}"})
    overwrite: bool = field(default=False, metadata={"help": "recompute an existing report"})

    def __post_init__(self):
        if self.n < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("need n >= 0, max_new_tokens >= 1, batch_size >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}")


def main(cfg: EvalConfig) -> None:
    run = resolve_run(cfg.run, cfg.profile, require_rank=None)
    out = run.folder / K.EVAL_JSON
    if out.is_file() and not cfg.overwrite:
        log.info("%s exists; skipping (--overwrite recomputes)", out)
        return
    source = data_dir(cfg.profile) / K.EVAL_JSONL if cfg.eval_data == "synthetic" else cfg.eval_data
    records = load_reasoning_records(str(source))
    records = records[:cfg.n] if cfg.n else records
    loaded = run.load(cfg.precision)
    model, bf16 = loaded.model, loaded.autocast_bf16
    args = (loaded.tokenizer, records, cfg.block_size, cfg.max_new_tokens, cfg.batch_size, bf16)
    if run.kind == "lora":
        with model.disable_adapter():
            base_report = evaluate_model(model, *args)
    else:
        base = load_model(run.model_id, dtype=next(model.parameters()).dtype).to(loaded.device)
        base_report = evaluate_model(base, *args)
    trained_report = evaluate_model(model, *args)
    report = {"run": run.name, "identity": run.identity(), "eval_data": str(source), "n": len(records),
              "bf16": bf16,
              "base": base_report, "trained": trained_report,
              "loss_change": trained_report["loss"] - base_report["loss"],
              "exact_match_change": trained_report["exact_match"] - base_report["exact_match"]}
    write_json(out, report)
    log.info("held-out (%d records)   loss %.3f -> %.3f   exact match %.1f%% -> %.1f%%", len(records),
             base_report["loss"], trained_report["loss"], 100 * base_report["exact_match"],
             100 * trained_report["exact_match"])
    log.info("wrote %s", out)


if __name__ == "__main__":
    config = parse_config(EvalConfig, "eval", __doc__)
    run_main(main, config)
