import subprocess

import pytest

from helpers import run_script
from rank1.config import REPO_ROOT, config_from_profile, load_profile, parse_config, project_root
from rank1.training.config import TrainConfig


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown profile 'nope'.*'paper'.*'test'.*'tiny'"):
        load_profile("nope")


def test_precedence_dataclass_profile_cli():
    cfg = parse_config(TrainConfig, "train", "", ["--profile", "paper"])
    assert (cfg.lr, cfg.block_size, cfg.model_id) == (1e-3, 20000, "Qwen/Qwen2.5-32B-Instruct")
    cfg = parse_config(TrainConfig, "train", "", ["--profile", "paper", "--lr", "3e-4", "--model_size", "7B"])
    assert (cfg.lr, cfg.model_id, cfg.gradient_checkpointing) == (3e-4, "Qwen/Qwen2.5-7B-Instruct", True)
    assert parse_config(TrainConfig, "train", "", ["--profile", "test", "--full"]).full


def test_profile_from_env_and_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK1_PROFILE", "test")
    assert parse_config(TrainConfig, "train", "", []).model == "random-qwen2"
    monkeypatch.setenv("RANK1_ROOT", str(tmp_path / "elsewhere"))
    assert project_root() == (tmp_path / "elsewhere").resolve()


def test_profile_with_unknown_key_fails(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('model = "random-qwen2"\n[train]\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match=r"\[train\] has unknown keys \['learning_rate'\]"):
        config_from_profile(TrainConfig, "train", str(path))


def test_invalid_values_fail_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, "train", "", ["--profile", "test", "--rank", "0"])
    assert "--rank must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, "train", "", ["--profile", "tiny", "--model_size", "7B"])
    assert "no {size} placeholder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, "train", "", ["--profile", "nope"])


@pytest.mark.parametrize("script", ["s1_peft/train.py", "s1_peft/prepare_data.py", "s1_peft/eval_benchmarks.py"])
def test_help(script):
    out = run_script([script, "--help"]).stdout
    assert "usage:" in out and "--profile" in out


def test_launcher_help():
    out = subprocess.run(["bash", "0_train_lora.sh", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and "--layer_stride" in out.stdout


def test_profile_file_of_your_own(tmp_path):
    path = tmp_path / "my_cluster.toml"
    path.write_text('model = "random-qwen2"\n[train]\nlr = 0.5\n')
    cfg = parse_config(TrainConfig, "train", "", ["--profile", str(path)])
    assert (cfg.profile, cfg.lr, cfg.model, cfg.rank) == ("my_cluster", 0.5, "random-qwen2", 1)


def test_results_dir_follows_root(isolated_root):
    from rank1.config import results_dir
    assert results_dir("tiny", "eval") == isolated_root / "results" / "tiny" / "eval"
    assert results_dir("tiny", "ablations", "tiny-r1-all") == isolated_root / "results/tiny/ablations/tiny-r1-all"
