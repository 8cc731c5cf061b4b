"""The training stage: rank-1 LoRA (or the full finetune baseline) with the HF Trainer.

The engine is ``transformers.Trainer`` (accelerate underneath; DeepSpeed ZeRO-3 or FSDP when a
config is given, torch DDP under ``torchrun``). This module adds what the paper's recipe needs on
top: the s1 data, layer selection, resumable checkpoints that survive SIGKILL, an atomic final save
that is checked for completeness, and the run folder's metadata and loss curve.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from rank1 import constants as K
from rank1.artifacts import read_json, write_json, write_run_metadata
from rank1.config import run_dir, saved_as_today
from rank1.data import PadCollator, TokenizedDataset, load_reasoning_records
from rank1.lora import adapter_sites, lora_config, parse_projections, verify_adapter
from rank1.models import load_model, load_tokenizer, num_layers
from rank1.plots import plot_loss_curve
from rank1.runs import use_bf16
from rank1.training.config import TrainConfig

log = logging.getLogger(__name__)


def distributed_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


RUN_MANAGEMENT_FIELDS = ("overwrite", "keep_checkpoints", "save_steps", "deepspeed", "run_name", "out")


def check_same_run(cfg: TrainConfig, saved: dict, folder: Path) -> None:
    """A finished run folder is only reused for the same training config (the saved one read as today's config
    reads it: fields newer than the run at their defaults, list fields saved as comma strings parsed)."""
    asked = dataclasses.asdict(cfg)
    trained = saved_as_today(cfg, saved)
    diff = {k: (trained[k], v) for k, v in asked.items() if k not in RUN_MANAGEMENT_FIELDS and trained[k] != v}
    if diff:
        shown = ", ".join(f"{k}: trained {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{folder} holds a finished run with another config ({shown}); "
                         f"pass --run_name NEW for a new run or --overwrite to replace it")


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """Newest ``checkpoint-N`` holding the completion marker; incomplete ones are ignored."""
    done = [p for p in folder.glob("checkpoint-*") if (p / K.CHECKPOINT_DONE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


class EpochSeededSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order as an
    uninterrupted one (the default sampler draws each epoch's order from the global RNG).

    With ``group`` = the global batch, the sequences of each optimizer step are sorted by length
    (longest first): every step is made of the same sequences as without sorting, so the gradient is
    unchanged, but its micro-batches hold similar lengths and less compute goes to padding.
    """

    def __init__(self, lengths: list[int], seed: int, group: int = 1):
        self.lengths, self.seed, self.group, self.epoch = lengths, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.group > 1:
            chunks = (order[i:i + self.group] for i in range(0, len(order), self.group))
            order = [j for chunk in chunks for j in sorted(chunk, key=lambda j: -self.lengths[j])]
        return iter(order)

    def __len__(self) -> int:
        return len(self.lengths)


class S1Trainer(Trainer):
    """Trainer whose shuffle is a function of (data_seed, epoch), on one process or several."""

    def __init__(self, *args, group_by_length: bool = True, **kwargs):
        self.group_by_length = group_by_length
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset or self.train_dataset
        a = self.args
        group = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size \
            if self.group_by_length and a.per_device_train_batch_size > 1 else 1
        self.epoch_sampler = EpochSeededSampler([len(x["input_ids"]) for x in ds], self.args.data_seed, group)
        return self.epoch_sampler

    def _run_epoch(self, *args, **kwargs):
        # accelerate's sharded batch sampler does not forward set_epoch, so set it here
        self.epoch_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)


class LossBar(ProgressCallback):
    """The Trainer's progress bar, with the latest loss in its postfix instead of printed dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ARG002 (the Trainer's signature)
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)


class RunFolderCallback(TrainerCallback):
    """Marks checkpoints complete after they are written and keeps the loss log current."""

    def __init__(self, folder: Path, title: str):
        self.folder, self.title = folder, title

    def on_save(self, args, state, control, **kwargs):  # noqa: ARG002 (the Trainer's signature)
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / K.CHECKPOINT_DONE).write_text(str(state.global_step))
            self.write_loss_log(state)

    def write_loss_log(self, state) -> None:
        steps = [{"step": r["step"], "loss": r["loss"], "lr": r["learning_rate"],
                  "grad_norm": r.get("grad_norm"), "epoch": r.get("epoch"),
                  "tokens_seen": r.get("num_input_tokens_seen")}
                 for r in state.log_history if "loss" in r and "learning_rate" in r]
        write_json(self.folder / K.LOSS_LOG_JSON, {"title": self.title, "steps": steps})


# transformers 5.23 renamed gradient_checkpointing to activation_checkpointing; the GPU set (requirements-gpu.txt,
# transformers 5.19 for vLLM) has only the old name
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")


def training_arguments(cfg: TrainConfig, folder: Path, bf16: bool) -> TrainingArguments:
    """The Trainer's arguments for ``cfg``. Build them before loading the model: with a ZeRO-3
    config this is what makes ``from_pretrained`` load the weights already sharded."""
    rank, world = distributed_world()
    on_gpu = torch.cuda.is_available()
    if cfg.global_batch % (cfg.micro_batch * world):
        raise ValueError(f"global_batch {cfg.global_batch} is not divisible by micro_batch x devices "
                         f"= {cfg.micro_batch} x {world}")
    return TrainingArguments(
        output_dir=str(folder / K.CHECKPOINTS_DIR), per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.global_batch // (cfg.micro_batch * world),
        learning_rate=cfg.full_lr if cfg.full else cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2, num_train_epochs=cfg.epochs,
        max_steps=cfg.full_max_steps if cfg.full and cfg.full_max_steps > 0 else cfg.max_steps,
        bf16=bf16, **{CHECKPOINTING: cfg.gradient_checkpointing,
                      f"{CHECKPOINTING}_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None},
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=2, logging_steps=1, report_to="none", seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=0, deepspeed=cfg.deepspeed,
        use_cpu=not on_gpu, ddp_backend="gloo" if world > 1 and not on_gpu else None,
        include_num_input_tokens_seen="non_padding", disable_tqdm=rank != 0)


def zero_stage(deepspeed: str | dict | None) -> int:
    """ZeRO stage of a DeepSpeed config (a JSON file or its dict); 0 without one."""
    if not deepspeed:
        return 0
    conf = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return int(conf.get("zero_optimization", {}).get("stage", 0))


def param_dtype(bf16: bool, on_gpu: bool, zero: int, trainable: bool = True) -> torch.dtype:
    """The dtype a parameter is held in while training.

    A trainable weight is an fp32 master weight and bf16 runs under autocast
    (``TrainingArguments(bf16=True)``), except under DeepSpeed ZeRO-3 on GPUs, which loads bf16 weights
    and keeps its own fp32 master copies in the optimizer. Without master copies a bf16 weight does not
    move: Adam's step is about lr (1e-5 for the full finetune), and a step below half a bf16 ulp
    (between 2^-9 |w| and 2^-8 |w|) rounds away, at lr 1e-5 for every |w| >= 2^-8 (about 4e-3): most
    weights of a trained model. A frozen weight (the base of a LoRA run) is bf16 on a GPU when bf16 is
    asked. On a CPU every weight stays fp32 (bf16 there is autocast only).
    """
    if not (bf16 and on_gpu):
        return torch.float32
    return torch.bfloat16 if zero == 3 or not trainable else torch.float32


def weight_precision(bf16: bool, on_gpu: bool, zero: int, full: bool) -> dict[str, str | None]:
    """What the run's metadata records about its weights: dtypes, compute, who keeps the master weights."""
    trainable = param_dtype(bf16, on_gpu, zero)
    frozen = None if full else param_dtype(bf16, on_gpu, zero, trainable=False)
    return {
        "trainable_dtype": str(trainable).removeprefix("torch."),
        "frozen_dtype": str(frozen).removeprefix("torch.") if frozen else None,
        "compute": "bf16 autocast" if bf16 and trainable == torch.float32 else "bf16" if bf16 else "fp32",
        "master_weights": "DeepSpeed ZeRO-3 (fp32 copies in the optimizer)" if trainable == torch.bfloat16
        else "the fp32 parameters",
    }


def build_model(cfg: TrainConfig, layers: list[int], bf16: bool) -> tuple[torch.nn.Module, int, dict]:
    """The base model, wrapped with the rank-r adapters unless --full; returns (model, n_adapters, precision),
    precision as :func:`weight_precision` records it."""
    on_gpu, zero = torch.cuda.is_available(), zero_stage(cfg.deepspeed)
    trainable = param_dtype(bf16, on_gpu, zero)
    base = trainable if cfg.full else param_dtype(bf16, on_gpu, zero, trainable=False)
    model = load_model(cfg.model_id, dtype=base)
    n_adapters = 0
    if not cfg.full:
        projections = parse_projections(cfg.projections)
        model = get_peft_model(model, lora_config(layers, cfg.rank, projections=projections))
        n_adapters = len(adapter_sites(model))
        if n_adapters != len(projections) * len(layers):
            raise RuntimeError(f"expected {len(projections) * len(layers)} adapters, PEFT made {n_adapters}")
        if trainable == torch.float32:  # PEFT's default already upcasts adapters; this states the contract
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    precision = weight_precision(bf16, on_gpu, zero, cfg.full)
    log.info("weights: trainable %s, frozen %s, compute %s, master weights: %s", precision["trainable_dtype"],
             precision["frozen_dtype"] or "none", precision["compute"], precision["master_weights"])
    return model, n_adapters, precision


def num_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    # under ZeRO-3 a parameter's local tensor is empty; ds_numel is its full size
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()
               if p.requires_grad or not trainable_only)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) one run; return its folder. A finished run is skipped unless overwrite."""
    rank, world = distributed_world()
    n_layers = num_layers(cfg.model_id)
    layers = cfg.layers(n_layers)
    folder = Path(cfg.out) if cfg.out else run_dir(cfg.run_name or cfg.default_run_name(n_layers), full=cfg.full)
    final = folder / (K.FULL_MODEL_DIR if cfg.full else K.ADAPTER_DIR)
    if (folder / K.CONFIG_JSON).is_file() and final.is_dir() and not cfg.overwrite:
        check_same_run(cfg, read_json(folder / K.CONFIG_JSON), folder)
        log.info("%s is finished; skipping (pass --overwrite to retrain)", folder)
        return folder
    if cfg.overwrite and rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    records = load_reasoning_records(cfg.dataset_path())

    bf16 = use_bf16(cfg.precision)
    args = training_arguments(cfg, folder, bf16)
    set_seed(cfg.seed)  # before get_peft_model: the adapter's A is drawn from the global RNG
    tokenizer = load_tokenizer(cfg.model_id)
    dataset = TokenizedDataset(tokenizer, records, cfg.block_size)
    model, n_adapters, precision = build_model(cfg, layers, bf16)
    trainable, total = num_params(model, trainable_only=True), num_params(model)
    kind = "full finetune" if cfg.full else f"rank-{cfg.rank} LoRA, {n_adapters} adapters"
    callback = RunFolderCallback(folder, f"{cfg.model_id} | {kind} | {len(records)} sequences")
    trainer = S1Trainer(model=model, args=args, train_dataset=dataset,
                        data_collator=PadCollator(tokenizer.pad_token_id), callbacks=[callback],
                        group_by_length=cfg.group_by_length)
    if rank == 0:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossBar())
    resume = None if cfg.overwrite else latest_complete_checkpoint(folder / K.CHECKPOINTS_DIR)
    log.info("training %s: %d/%d trainable parameters (%.4f%%), layers %s, bf16=%s, world=%d%s",
             folder.name, trainable, total, 100 * trainable / total, layers, bf16, world,
             f", resuming from {resume.name}" if resume else "")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.time() - t0

    tmp = folder / f".{final.name}.saving"
    trainer.save_model(str(tmp))  # on every rank: ZeRO-3 gathers the shards here
    if trainer.is_world_process_zero():
        if not cfg.full:
            verify_adapter(tmp, layers, cfg.rank, parse_projections(cfg.projections))
        else:  # a complete model folder (vLLM and from_pretrained read the tokenizer and chat template from it)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        callback.write_loss_log(trainer.state)
        plot_loss_curve(folder / K.LOSS_LOG_JSON, folder / K.LOSS_CURVE_PDF, folder / K.LOSS_CURVE_PNG)
        tokens = trainer.state.num_input_tokens_seen
        write_run_metadata(folder, cfg, {
            "model_id": cfg.model_id, "num_layers": n_layers, "layers": layers, "n_adapters": n_adapters,
            "adapted_projections": list(parse_projections(cfg.projections)),
            "trainable_params": trainable, "total_params": total, "bf16": bf16, **precision,
            "world_size": world,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "n_sequences": len(records),
            "n_truncated": dataset.truncated, "global_steps": trainer.state.global_step,
            "resumed_from": resume.name if resume else None,
            "final_loss": read_json(folder / K.LOSS_LOG_JSON)["steps"][-1]["loss"],
            "train_loss": result.training_loss, "tokens_seen": tokens,
            "runtime_s_this_session": round(runtime, 2),
            "tokens_per_s": round(tokens / runtime, 1) if resume is None and runtime else None,
        })
        if not cfg.keep_checkpoints:
            shutil.rmtree(folder / K.CHECKPOINTS_DIR, ignore_errors=True)
        log.info("wrote %s (%s)", final, kind)
    if world > 1:
        torch.distributed.barrier()
    return folder
