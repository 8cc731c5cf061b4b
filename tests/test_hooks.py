import pytest
import torch
from peft import get_peft_model

from rank1.hooks import (
    ablate_adapters,
    add_hooks,
    count_hooks,
    folded_adapters,
    read_adapter_activations,
    replace_adapter_activations,
)
from rank1.lora import adapter_sites, lora_config
from rank1.models import load_model


@pytest.fixture
def peft_model():
    model = get_peft_model(load_model("random-qwen2"), lora_config([0, 1]))
    for s in adapter_sites(model):  # B is zero at init; make every adapter contribute
        torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.5)
    return model.eval()


def test_activation_is_input_dot_A(peft_model):
    sites = adapter_sites(peft_model)
    inputs = {}

    def keep(i):
        def fn(_m, args):
            inputs[i] = args[0].detach()
        return fn

    ids = torch.randint(0, 200, (2, 5))
    with add_hooks(pre_hooks=[(s.module, keep(i)) for i, s in enumerate(sites)]), \
            read_adapter_activations(sites) as store:
        peft_model(ids)
        acts_BTS = store.scalars_BTS()
    assert acts_BTS.shape == (2, 5, 14)
    for i, s in enumerate(sites):
        a_D = s.module.lora_A["default"].weight[0]
        torch.testing.assert_close(acts_BTS[..., i], inputs[i] @ a_D)
    # down_proj reads the SwiGLU product: its input width is the MLP width, not the hidden size
    down = next(i for i, s in enumerate(sites) if s.proj == "down_proj")
    assert inputs[down].shape[-1] == peft_model.config.intermediate_size


def test_ablating_every_adapter_gives_the_base_model(peft_model):
    ids = torch.randint(0, 200, (1, 6))
    with torch.no_grad():
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
        full = peft_model(ids).logits
        with ablate_adapters(adapter_sites(peft_model)):
            ablated = peft_model(ids).logits
        mlp_only_ablated = None
        with ablate_adapters([s for s in adapter_sites(peft_model) if s.is_mlp]):
            mlp_only_ablated = peft_model(ids).logits
    torch.testing.assert_close(ablated, base)
    assert not torch.allclose(full, base)
    assert not torch.allclose(mlp_only_ablated, base) and not torch.allclose(mlp_only_ablated, full)


def test_hooks_are_removed_even_on_error(peft_model):
    before = count_hooks(peft_model)
    sites = adapter_sites(peft_model)
    with pytest.raises(RuntimeError, match="boom"):
        with read_adapter_activations(sites), ablate_adapters(sites):
            assert count_hooks(peft_model) == before + 28
            raise RuntimeError("boom")
    assert count_hooks(peft_model) == before


def test_store_reports_adapters_that_did_not_run(peft_model):
    with read_adapter_activations(adapter_sites(peft_model)) as store:
        with pytest.raises(RuntimeError, match="14 adapters did not run"):
            store.stacked()


def test_replacing_activations(peft_model):
    """Replaced by themselves: the same logits; by zeros: the base model; one adapter changed: its B times
    the RSLoRA scale times the change is added to that projection's output, and the activations read
    downstream differ."""
    sites = adapter_sites(peft_model)
    ids = torch.randint(0, 200, (2, 6))
    with torch.no_grad():
        with read_adapter_activations(sites) as store:
            full = peft_model(ids).logits
            acts_BTS = store.scalars_BTS()
        with replace_adapter_activations(sites, acts_BTS):
            same = peft_model(ids).logits
        with replace_adapter_activations(sites, torch.zeros_like(acts_BTS)):
            zero = peft_model(ids).logits
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
        last = len(sites) - 1  # layer 1 down_proj: its output goes straight into the residual stream
        shifted = acts_BTS.clone()
        shifted[..., last] += 1.0
        seen = {}
        module = sites[last].module
        with add_hooks([(module, lambda m, a, out: seen.__setitem__("out", out))]):
            with replace_adapter_activations(sites, acts_BTS):
                peft_model(ids)
            before = seen["out"]
            with replace_adapter_activations(sites, shifted):
                peft_model(ids)
    torch.testing.assert_close(same, full, rtol=0, atol=0)
    torch.testing.assert_close(zero, base, rtol=0, atol=0)
    b_D = module.lora_B["default"].weight[:, 0]
    torch.testing.assert_close(seen["out"] - before, (b_D * module.scaling["default"]).expand_as(before),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="values have 3 columns, there are 14 adapters"):
        with replace_adapter_activations(sites, acts_BTS[..., :3]):
            pass
    assert count_hooks(peft_model) == 0


def test_folded_adapters_compute_the_same_function_and_restore_every_bit(peft_model):
    sites = adapter_sites(peft_model)
    mlp = [s for s in sites if s.is_mlp]
    attn = [s for s in sites if not s.is_mlp]
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    ids = torch.randint(0, 200, (2, 7))
    with torch.no_grad():
        on = peft_model(ids).logits
        with ablate_adapters(mlp):
            hooked = peft_model(ids).logits
        with folded_adapters(sites):
            assert all(s.module.merged for s in sites)
            torch.testing.assert_close(peft_model(ids).logits, on, rtol=1e-4, atol=1e-4)
        with folded_adapters(attn, off=mlp):
            torch.testing.assert_close(peft_model(ids).logits, hooked, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(peft_model(ids).logits, on, atol=1e-3)
        assert torch.equal(peft_model(ids).logits, on)
    after = peft_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(s.module.merged or s.module.disable_adapters for s in sites)


def test_folding_needs_float32_and_leaves_the_model_as_it_was(peft_model):
    sites = adapter_sites(peft_model)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    last = sites[-1].module.get_base_layer()
    last.weight.data = last.weight.data.double()
    with pytest.raises(ValueError, match=f"needs float32 weights; layer 1 {sites[-1].proj} is torch.float64"):
        with folded_adapters(sites, off=sites[:1]):
            pass
    last.weight.data = last.weight.data.float()
    after = peft_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(s.module.merged or s.module.disable_adapters for s in sites)
