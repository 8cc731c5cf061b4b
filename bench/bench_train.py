"""Training throughput and peak memory: our trainer vs. a plain HF Trainer + PEFT reference.

Both train the same model on the same tokenized data with the same LoRA config, batch and steps, each
in its own process (so peak RSS is its own). Prints tokens/s, peak RSS and the ratios ours/reference.

Usage:
    python bench/bench_train.py                      # tiny profile (SmolLM2-135M), 12 steps
    python bench/bench_train.py --profile test --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

RESULT_PREFIX = "BENCH_RESULT "


def reference(profile: str, steps: int) -> dict:
    """The textbook recipe: Trainer + get_peft_model + a padding collator, nothing else."""
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from rank1.config import config_from_profile
    from rank1.data import TokenizedDataset, load_reasoning_records
    from rank1.lora import lora_config
    from rank1.models import load_model, load_tokenizer
    from rank1.runs import use_bf16
    from rank1.training.config import TrainConfig

    cfg = config_from_profile(TrainConfig, "train", profile, max_steps=steps)
    tok = load_tokenizer(cfg.model_id)
    model = load_model(cfg.model_id, dtype=torch.float32)
    model = get_peft_model(model, lora_config(cfg.layers(model.config.num_hidden_layers), cfg.rank))
    ds = TokenizedDataset(tok, load_reasoning_records(cfg.dataset_path()), cfg.block_size)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.global_batch // cfg.micro_batch, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, max_steps=steps, bf16=use_bf16(cfg.precision),
        save_strategy="no", logging_steps=1, report_to="none", seed=cfg.seed, use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding", remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    t0 = time.time()
    trainer.train()
    return {"tokens": trainer.state.num_input_tokens_seen, "seconds": time.time() - t0}


def ours(profile: str, steps: int) -> dict:
    from rank1.artifacts import read_json
    from rank1.config import config_from_profile
    from rank1.training import TrainConfig, train

    cfg = config_from_profile(TrainConfig, "train", profile, max_steps=steps, save_steps=0,
                              run_name="bench", overwrite=True)
    run = read_json(train(cfg) / "config.json")
    return {"tokens": run["tokens_seen"], "seconds": run["runtime_s_this_session"]}


def worker(kind: str, profile: str, steps: int) -> None:
    result = (ours if kind == "ours" else reference)(profile, steps)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(kind: str, args: argparse.Namespace, root: str) -> dict:
    env = {**os.environ, "RANK1_ROOT": root}
    env.setdefault("RANK1_CACHE", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cache"))
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--profile", args.profile,
                           "--steps", str(args.steps)], env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len(RESULT_PREFIX):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each")
    parser.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.profile, args.steps)

    from rank1.config import data_dir, project_root
    from rank1.constants import TRAIN_JSONL
    from rank1.synth import write_splits
    root = tempfile.mkdtemp(prefix="bench-")
    src = data_dir(args.profile) / TRAIN_JSONL
    os.environ["RANK1_ROOT"] = root
    if src.is_file():  # same data as the pipeline uses
        os.makedirs(data_dir(args.profile), exist_ok=True)
        os.link(src, data_dir(args.profile) / TRAIN_JSONL)
    else:
        write_splits(data_dir(args.profile), 2000, 64, 0)
    print(f"profile={args.profile} steps={args.steps} repeats={args.repeats} (outputs in {project_root()})")
    results: dict[str, list[dict]] = {"reference": [], "ours": []}
    for _ in range(args.repeats):
        for kind in ("reference", "ours"):
            results[kind].append(run_worker(kind, args, root))
            r = results[kind][-1]
            print(f"  {kind:9s} {r['tokens'] / r['seconds']:8.1f} tokens/s   peak RSS {r['peak_rss_mib']:7.0f} MiB")
    tps = {k: sum(r["tokens"] / r["seconds"] for r in v) / len(v) for k, v in results.items()}
    rss = {k: sum(r["peak_rss_mib"] for r in v) / len(v) for k, v in results.items()}
    print(f"means over {args.repeats} run(s): ours {tps['ours']:.1f} vs reference {tps['reference']:.1f} tokens/s, "
          f"{rss['ours']:.0f} vs {rss['reference']:.0f} MiB")
    print(f"throughput ratio ours/reference: {tps['ours'] / tps['reference']:.3f}  (target >= 1.0)")
    print(f"peak memory ratio ours/reference: {rss['ours'] / rss['reference']:.3f}  (target <= 1.0)")


if __name__ == "__main__":
    main()
