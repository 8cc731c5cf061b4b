"""Held-out report of a training run: loss and exact-match accuracy, base model vs. trained model.

Usage:
    python s1_peft/eval_heldout.py --profile tiny                 # the profile's default run
    python s1_peft/eval_heldout.py --run s1_peft/ckpts_lora/tiny-r1-L20-30s1 --n 32

Writes <run>/eval_heldout.json. The base model is the same loaded weights with the adapter disabled.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from rank1 import constants as K
from rank1.artifacts import read_json, write_json
from rank1.config import data_dir, parse_config, run_dir
from rank1.data import load_reasoning_records
from rank1.evaluate import evaluate_model
from rank1.logs import run_main
from rank1.models import load_model, load_tokenizer
from rank1.train import PRECISIONS, latest_run, use_bf16

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


def resolve_run(cfg: EvalConfig) -> Path:
    if not cfg.run:
        return latest_run(cfg.profile)
    path = Path(cfg.run)
    return path if path.is_dir() else run_dir(cfg.run)


def main(cfg: EvalConfig) -> None:
    folder = resolve_run(cfg)
    if not (folder / K.CONFIG_JSON).is_file():
        raise SystemExit(f"error: {folder} holds no finished run ({K.CONFIG_JSON} missing); "
                         f"train it first with bash 0_train_lora.sh")
    out = folder / K.EVAL_JSON
    if out.is_file() and not cfg.overwrite:
        log.info("%s exists; skipping (--overwrite recomputes)", out)
        return
    run_cfg = read_json(folder / K.CONFIG_JSON)
    source = data_dir(cfg.profile) / K.EVAL_JSONL if cfg.eval_data == "synthetic" else cfg.eval_data
    records = load_reasoning_records(str(source))
    records = records[:cfg.n] if cfg.n else records
    bf16 = use_bf16(cfg.precision)
    tokenizer = load_tokenizer(run_cfg["model_id"])
    on_gpu = torch.cuda.is_available()
    base = load_model(run_cfg["model_id"], dtype=torch.bfloat16 if bf16 and on_gpu else torch.float32)
    args = (tokenizer, records, cfg.block_size, cfg.max_new_tokens, cfg.batch_size, bf16)
    if (folder / K.ADAPTER_DIR).is_dir():
        model = PeftModel.from_pretrained(base, folder / K.ADAPTER_DIR)
        with model.disable_adapter():
            base_report = evaluate_model(model, *args)
        trained_report = evaluate_model(model, *args)
    else:
        base_report = evaluate_model(base, *args)
        trained = load_model(str(folder / K.FULL_MODEL_DIR), dtype=base.dtype)
        trained_report = evaluate_model(trained, *args)
    report = {"run": folder.name, "eval_data": str(source), "n": len(records), "bf16": bf16,
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
