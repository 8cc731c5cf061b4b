"""Training on the tiny random Qwen2: run folder, resume after SIGKILL, full finetune, 2-process DDP."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from helpers import run_script
from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import REPO_ROOT, config_from_profile, data_dir
from rank1.lora import verify_adapter
from rank1.models import load_model, load_tokenizer
from rank1.runs import latest_run
from rank1.synth import write_splits
from rank1.training import TrainConfig, train


@pytest.fixture
def test_data(isolated_root):
    write_splits(data_dir("test"), n_train=48, n_eval=8, seed=0)


def adapter_weights(folder):
    return load_file(folder / K.ADAPTER_DIR / "adapter_model.safetensors")


def test_run_folder_contents_and_skip(test_data):
    folder = train(config_from_profile(TrainConfig, "train", "test", max_steps=6, run_name="r"))
    assert verify_adapter(folder / K.ADAPTER_DIR, [0, 1], rank=1) == 14
    cfg = read_json(folder / K.CONFIG_JSON)
    assert (cfg["n_adapters"], cfg["global_steps"], cfg["rank"], cfg["layers"]) == (14, 6, 1, [0, 1])
    steps = read_json(folder / K.LOSS_LOG_JSON)["steps"]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert steps[-1]["loss"] < steps[0]["loss"]
    for name in (K.LOSS_CURVE_PDF, K.LOSS_CURVE_PNG, K.ARGV_JSON):
        assert (folder / name).stat().st_size > 0
    assert not (folder / K.CHECKPOINTS_DIR).exists()
    assert latest_run("test") == folder
    # plain PEFT loads it, and the adapter changes the model's output
    base = load_model("random-qwen2")
    ids = torch.arange(20)[None]
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, folder / K.ADAPTER_DIR)(ids).logits
    assert not torch.allclose(before, after)
    # a finished run is skipped, not retrained
    stamp = (folder / K.CONFIG_JSON).stat().st_mtime_ns
    train(config_from_profile(TrainConfig, "train", "test", max_steps=6, run_name="r"))
    assert (folder / K.CONFIG_JSON).stat().st_mtime_ns == stamp


def test_layer_selection_reaches_the_saved_adapter(test_data):
    folder = train(config_from_profile(TrainConfig, "train", "test", max_steps=2, layer_indices=[1]))
    assert folder.name == "test-r1-L1"
    assert verify_adapter(folder / K.ADAPTER_DIR, [1], rank=1) == 7


def test_missing_synthetic_data_says_how_to_make_it(isolated_root):
    with pytest.raises(FileNotFoundError, match="prepare_data.py --profile test"):
        train(config_from_profile(TrainConfig, "train", "test", max_steps=1))


def test_full_finetune(test_data):
    folder = train(config_from_profile(TrainConfig, "train", "test", max_steps=2, full=True))
    assert folder.parent.name == "ckpts_full" and read_json(folder / K.CONFIG_JSON)["n_adapters"] == 0
    tuned, base = load_model(str(folder / K.FULL_MODEL_DIR)), load_model("random-qwen2")
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert len(changed) > 10  # every matrix trains, not only adapters
    # a complete model folder: its own tokenizer and chat template, as a server loading it by path needs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / K.FULL_MODEL_DIR)
    assert tok.chat_template and tok("2+2=4")["input_ids"] == load_tokenizer("random-qwen2")("2+2=4")["input_ids"]


def train_cmd(run_name, *extra):
    return [sys.executable, "s1_peft/train.py", "--profile", "test", "--max_steps", "40", "--save_steps", "4",
            "--run_name", run_name, *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(test_data):
    run_script(train_cmd("uninterrupted")[1:])
    ckpts = data_dir("x").parents[1] / "s1_peft" / "ckpts_lora" / "killed" / K.CHECKPOINTS_DIR
    proc = subprocess.Popen(train_cmd("killed"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # 12 steps per epoch: wait for a checkpoint inside the second epoch, so the resumed run must
    # reproduce that epoch's shuffle, not only the first one's
    while not (ckpts / "checkpoint-16" / K.CHECKPOINT_DONE).exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (ckpts.parent / K.ADAPTER_DIR).exists()
    run_script(train_cmd("killed")[1:])
    run = read_json(ckpts.parent / K.CONFIG_JSON)
    assert run["resumed_from"].startswith("checkpoint-") and run["global_steps"] == 40
    ref, resumed = adapter_weights(ckpts.parents[1] / "uninterrupted"), adapter_weights(ckpts.parent)
    assert ref.keys() == resumed.keys()
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=1e-5, atol=1e-6)
    ref_loss = [s["loss"] for s in read_json(ckpts.parents[1] / "uninterrupted" / K.LOSS_LOG_JSON)["steps"]]
    assert [s["loss"] for s in read_json(ckpts.parent / K.LOSS_LOG_JSON)["steps"]] == pytest.approx(ref_loss, rel=1e-4)


def test_two_process_gloo_data_parallel(test_data):
    proc = run_script(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                       "s1_peft/train.py", "--profile", "test", "--max_steps", "4", "--run_name", "ddp"],
                      timeout=300)
    folder = data_dir("x").parents[1] / "s1_peft" / "ckpts_lora" / "ddp"
    run = read_json(folder / K.CONFIG_JSON)
    facts = (run["world_size"], run["gradient_accumulation_steps"], run["global_steps"])
    assert facts == (2, 2, 4), proc.stderr[-2000:]
    assert verify_adapter(folder / K.ADAPTER_DIR, [0, 1], rank=1) == 14
    # tokens are counted over both processes: 4 steps x 4 sequences, all real tokens
    single = train(config_from_profile(TrainConfig, "train", "test", max_steps=4, run_name="single"))
    assert run["tokens_seen"] > 0.5 * read_json(single / K.CONFIG_JSON)["tokens_seen"]


def test_epoch_seeded_sampler():
    from rank1.training.trainer import EpochSeededSampler
    lengths = [5, 1, 9, 3, 7, 2, 8, 4]
    s = EpochSeededSampler(lengths, seed=0)
    first = list(s)
    assert sorted(first) == list(range(8)) and list(s) == first  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != first
    grouped = EpochSeededSampler(lengths, seed=0, group=4)
    order = list(grouped)
    assert sorted(order[:4]) == sorted(first[:4])  # grouping only reorders inside each run of 4
    for run in (order[:4], order[4:]):
        assert [lengths[j] for j in run] == sorted((lengths[j] for j in run), reverse=True)


def test_length_grouping_keeps_the_gradient(test_data):
    """Sorting a step's sequences into micro-batches by length changes padding, not the update."""
    runs = {}
    for group in (True, False):
        cfg = config_from_profile(TrainConfig, "train", "test", max_steps=3, micro_batch=2,
                                  group_by_length=group, run_name=f"group-{group}")
        runs[group] = adapter_weights(train(cfg))
    for k in runs[True]:
        torch.testing.assert_close(runs[True][k], runs[False][k], rtol=1e-4, atol=1e-6)


def test_finished_run_with_another_config_is_not_reused(test_data):
    train(config_from_profile(TrainConfig, "train", "test", max_steps=2, run_name="r"))
    with pytest.raises(ValueError, match=r"another config \(lr: trained 0.01, asked 0.5\).*--overwrite"):
        train(config_from_profile(TrainConfig, "train", "test", max_steps=2, run_name="r", lr=0.5))


def test_bad_input_is_one_error_line_and_no_run_folder(isolated_root):
    proc = run_script(["s1_peft/train.py", "--profile", "test", "--layer_start", "5"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: --layer_start 5 out of range: the model has layers 0..1"
    assert not (isolated_root / "s1_peft").exists()


def test_full_finetune_has_its_own_steps_and_cpu_auto_is_fp32(tmp_path):
    from rank1.runs import use_bf16
    from rank1.training.trainer import training_arguments

    lora = config_from_profile(TrainConfig, "train", "test", max_steps=7, full_max_steps=3)
    full = config_from_profile(TrainConfig, "train", "test", max_steps=7, full_max_steps=3, full=True)
    assert training_arguments(lora, tmp_path, False).max_steps == 7
    assert training_arguments(full, tmp_path, False).max_steps == 3
    unset = config_from_profile(TrainConfig, "train", "test", max_steps=7, full=True)
    assert training_arguments(unset, tmp_path, False).max_steps == 7
    if not torch.cuda.is_available():
        assert use_bf16("auto") is False and use_bf16("bf16") is True


@pytest.mark.parametrize("bf16,on_gpu,zero,trainable,expected", [
    (False, False, 0, True, torch.float32),
    (False, True, 0, True, torch.float32),
    (False, True, 3, True, torch.float32),
    (True, False, 0, True, torch.float32),   # CPU: bf16 is autocast only
    (True, False, 3, True, torch.float32),
    (True, True, 0, True, torch.float32),    # one GPU or DDP: fp32 master weights, bf16 autocast
    (True, True, 2, True, torch.float32),
    (True, True, 3, True, torch.bfloat16),   # ZeRO-3 keeps the fp32 master copies itself
    (True, True, 0, False, torch.bfloat16),  # the frozen base of a LoRA run
    (True, False, 0, False, torch.float32),
    (False, True, 0, False, torch.float32),
])
def test_param_dtype_table(bf16, on_gpu, zero, trainable, expected):
    from rank1.training.trainer import param_dtype
    assert param_dtype(bf16, on_gpu, zero, trainable) == expected


def test_zero_stage_of_a_deepspeed_config(tmp_path):
    from rank1.training.trainer import zero_stage
    assert zero_stage(None) == 0 and zero_stage({"bf16": {"enabled": True}}) == 0
    assert zero_stage(str(REPO_ROOT / "configs" / "deepspeed_zero3.json")) == 3
    (tmp_path / "z2.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert zero_stage(str(tmp_path / "z2.json")) == 2


def test_an_lr_1e5_adam_step_needs_fp32_master_weights():
    """One AdamW step at the full finetune's lr moves every weight by about 1e-5: below half a bf16 ulp
    of a weight of typical magnitude (std 0.02), so bf16 weights stay put; fp32 master weights move."""
    from rank1.training.trainer import param_dtype

    g = torch.Generator().manual_seed(0)
    w_N = 0.02 * torch.randn(100_000, generator=g)
    grad_N = torch.randn(100_000, generator=g)

    def one_step(dtype):
        p = torch.nn.Parameter(w_N.to(dtype, copy=True))
        p.grad = grad_N.to(dtype)
        torch.optim.AdamW([p], lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4).step()
        return (p.detach() != w_N.to(dtype)).float().mean().item()

    assert one_step(torch.bfloat16) < 0.3  # about 80% of the weights do not move at all
    assert one_step(torch.float32) > 0.99
    for zero in (0, 1, 2):  # off ZeRO-3 the trainer holds fp32 master weights, on a GPU too
        assert param_dtype(bf16=True, on_gpu=True, zero=zero) == torch.float32


def test_bf16_full_finetune_at_lr_1e5_changes_the_weights(test_data, monkeypatch):
    """A real one-step full finetune with bf16 (autocast on a CPU) at lr 1e-5 moves the weights, and the
    trainer follows param_dtype: the same step on weights held in bf16 leaves most of them unchanged."""
    from rank1.training import trainer

    def changed_share(run_name):
        cfg = config_from_profile(TrainConfig, "train", "test", full=True, max_steps=1, warmup_ratio=0.0,
                                  precision="bf16", run_name=run_name)
        folder = train(cfg)
        tuned = {k: t for f in (folder / K.FULL_MODEL_DIR).glob("*.safetensors") for k, t in load_file(f).items()}
        base = load_model("random-qwen2").state_dict()
        mats = [k for k, t in tuned.items() if "layers." in k and t.dim() == 2]  # as saved: fp32 or bf16
        moved = sum(int((tuned[k] != base[k].to(tuned[k].dtype)).sum()) for k in mats)
        return moved / sum(tuned[k].numel() for k in mats), read_json(folder / K.CONFIG_JSON)

    share, meta = changed_share("fp32-master")
    assert (meta["full_lr"], meta["bf16"], meta["trainable_dtype"], meta["compute"]) == \
        (1e-5, True, "float32", "bf16 autocast")
    assert meta["master_weights"] == "the fp32 parameters"
    assert share > 0.95
    monkeypatch.setattr(trainer, "param_dtype", lambda *a, **k: torch.bfloat16)  # the old GPU behaviour
    share_bf16, meta = changed_share("bf16-weights")
    assert share_bf16 < 0.5
