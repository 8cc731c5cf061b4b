import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file

from rank1.lora import (
    AdapterCheckError,
    adapter_sites,
    lora_config,
    parse_projections,
    rslora_scale,
    select_layers,
    verify_adapter,
)
from rank1.models import load_model


@pytest.mark.parametrize("kwargs,expected", [
    ({}, list(range(8))),
    ({"layer_start": 2, "layer_end": 5}, [2, 3, 4]),
    ({"layer_start": 6}, [6, 7]),
    ({"layer_end": 2}, [0, 1]),
    ({"last_third": True}, [5, 6, 7]),
    ({"layer_indices": [7, 0, 3]}, [0, 3, 7]),
    ({"layer_stride": 3}, [0, 3, 6]),
    ({"layer_start": 1, "layer_end": 8, "layer_stride": 2}, [1, 3, 5, 7]),
    ({"last_third": True, "layer_stride": 2}, [5, 7]),
])
def test_select_layers(kwargs, expected):
    assert select_layers(8, **kwargs) == expected


def test_last_third_of_the_paper_and_tiny_models():
    assert select_layers(64, last_third=True) == list(range(42, 64))
    assert select_layers(30, last_third=True) == list(range(20, 30))


@pytest.mark.parametrize("kwargs,message", [
    ({"layer_start": 8}, "layer_start 8 out of range"),
    ({"layer_start": -1}, "layer_start -1 out of range"),
    ({"layer_end": 9}, "layer_end 9 must satisfy"),
    ({"layer_start": 4, "layer_end": 4}, "layer_end 4 must satisfy"),
    ({"layer_indices": [8]}, r"layer_indices \[8\] out of range"),
    ({"layer_indices": [1, 1]}, "distinct"),
    ({"layer_indices": [1], "layer_start": 0}, "cannot be combined"),
    ({"last_third": True, "layer_end": 4}, "--last_third cannot be combined"),
    ({"layer_stride": 0}, "layer_stride must be >= 1"),
])
def test_select_layers_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_layers(8, **kwargs)


@pytest.mark.parametrize("spec,expected", [
    (["all"], ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    (["mlp"], ("gate_proj", "up_proj", "down_proj")),
    (["attn"], ("q_proj", "k_proj", "v_proj", "o_proj")),
    (["down", "q_proj", "v"], ("q_proj", "v_proj", "down_proj")),  # the paper's order, short or full names
    ("up, gate", ("gate_proj", "up_proj")),  # a string: the joined target modules of a saved adapter
])
def test_parse_projections(spec, expected):
    assert parse_projections(spec) == expected


@pytest.mark.parametrize("spec,message", [
    (["q", "x"], r"--projections 'q,x': unknown \['x_proj'\]"),
    (["mlp", "q"], r"unknown \['mlp_proj'\]"),  # a group stands alone
    ([], "unknown empty list"),
])
def test_parse_projections_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_projections(spec)


def test_rank_below_one():
    with pytest.raises(ValueError, match="--rank must be >= 1, got 0"):
        lora_config([0], rank=0)


@pytest.mark.parametrize("layers,rank", [([0, 1], 1), ([1], 1), ([0, 1], 4)])
def test_adapter_count_rank_and_scale(layers, rank):
    model = get_peft_model(load_model("random-qwen2"), lora_config(layers, rank))
    sites = adapter_sites(model)
    assert len(sites) == 7 * len(layers)
    assert sorted({s.layer for s in sites}) == layers
    for s in sites:
        assert s.module.lora_A["default"].weight.shape[0] == rank
        assert s.module.lora_B["default"].weight.shape[1] == rank
        assert s.module.scaling["default"] == pytest.approx(16 / rank ** 0.5)
    assert rslora_scale(1) == 16
    assert sum(s.is_mlp for s in sites) == 3 * len(layers)


def saved_adapter(tmp_path, layers=(0, 1), trained=True):
    """A saved adapter; ``trained`` gives every B random values (PEFT starts B at zero)."""
    model = get_peft_model(load_model("random-qwen2"), lora_config(list(layers)))
    if trained:
        for s in adapter_sites(model):
            torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.1)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_verify_adapter_accepts_a_complete_one(tmp_path):
    assert verify_adapter(saved_adapter(tmp_path), [0, 1], rank=1) == 14


def test_verify_adapter_catches_empty_and_missing_tensors(tmp_path):
    folder = saved_adapter(tmp_path)
    weights = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in weights if "layers.1" in k and "gate_proj.lora_A" in k)
    weights[key] = torch.zeros(0)  # what an un-gathered ZeRO-3 shard looks like
    del weights[next(k for k in weights if "layers.0" in k and "v_proj.lora_B" in k)]
    save_file(weights, folder / "adapter_model.safetensors")
    with pytest.raises(AdapterCheckError, match=r"(?s)1 tensors missing.*layer 1 gate_proj lora_A has shape \(0,\)"):
        verify_adapter(folder, [0, 1], rank=1)


def test_verify_adapter_catches_wrong_layers_and_missing_files(tmp_path):
    with pytest.raises(AdapterCheckError, match="14 tensors missing"):
        verify_adapter(saved_adapter(tmp_path, layers=(0,)), [0, 1], rank=1)
    with pytest.raises(AdapterCheckError, match="missing: the adapter was not saved"):
        verify_adapter(tmp_path / "nowhere", [0], rank=1)


def test_verify_adapter_fails_an_untrained_adapter(tmp_path):
    with pytest.raises(AdapterCheckError, match=r"untrained:\n  every lora_B \(14\) is all zero: the adapter was "
                                                r"never trained"):
        verify_adapter(saved_adapter(tmp_path, trained=False), [0, 1], rank=1)


def test_verify_adapter_accepts_some_zero_b_and_names_them(tmp_path, caplog):
    """An adapter with the MLP B zeroed (what an ablated copy served to vLLM holds) still passes."""
    folder = saved_adapter(tmp_path)
    weights = load_file(folder / "adapter_model.safetensors")
    for key in weights:
        if "lora_B" in key and ("layers.1.mlp" in key or "layers.0.mlp.down_proj" in key):
            weights[key] = torch.zeros_like(weights[key])
    save_file(weights, folder / "adapter_model.safetensors")
    assert verify_adapter(folder, [0, 1], rank=1) == 14
    assert "lora_B is all zero at 4 of 14 sites (layer 0 down_proj, layer 1 gate_proj, layer 1 up_proj, " \
           "layer 1 down_proj)" in caplog.text
