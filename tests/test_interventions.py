"""Stage 4 (interventions) on hand-made inputs and the 2-layer test model: weight geometry, steering,
attribution, rollouts and probes."""

import math

import numpy as np
import pytest
import torch

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import config_from_profile, results_dir
from rank1.weight_geometry import cross_projection, geometry, random_abs_cos
from tests.helpers import load_script, make_run

# ---------------------------------------------------------------- 4.4 weight geometry


def _vectors(sign=1.0):
    """Two layers, d_model 2, d_ff 3: up A / gate A / down B chosen so every cosine is known."""
    r2 = math.sqrt(2)
    return {
        (0, "up_proj"): (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0, 0])),
        (0, "gate_proj"): (torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1, 0])),
        (0, "down_proj"): (torch.tensor([0.0, 0, 2]), sign * torch.tensor([3.0, 3.0])),
        (1, "up_proj"): (torch.tensor([0.0, -2.0]), torch.tensor([1.0, 0, 0])),
        (1, "gate_proj"): (torch.tensor([r2, 0.0]), torch.tensor([0.0, 1, 0])),
        (1, "down_proj"): (torch.tensor([1.0, 0, 0]), torch.tensor([0.0, -1.0])),
    }


def test_geometry_by_hand():
    geo = geometry(_vectors())
    assert geo["layers"] == [0, 1] and geo["projections"] == ["gate_proj", "up_proj", "down_proj"]
    assert geo["norms"]["B"]["down_proj"] == pytest.approx([math.sqrt(18), 1.0])
    assert geo["norms"]["A"]["up_proj"] == pytest.approx([1.0, 2.0])
    s = 1 / math.sqrt(2)
    down = geo["across_layers"]["down_proj B"]
    assert np.allclose(down["matrix"], [[1, s], [s, 1]], atol=1e-4)  # |cos([3,3], [0,-1])|
    up_down = geo["cross_projection"]["up_proj A vs down_proj B"]
    # rows: up A of layer 0, 1 = [1,0], [0,-2]; columns: down B of layer 0, 1 = [3,3], [0,-1]
    assert np.allclose(up_down["matrix"], [[s, 0], [s, 1]], atol=1e-4)
    assert up_down["mean_abs_diagonal"] == pytest.approx((s + 1) / 2, abs=1e-4)
    assert up_down["dim"] == 2 and up_down["random_abs_cos"] == pytest.approx(2 / math.pi)
    up_gate = geo["cross_projection"]["up_proj A vs gate_proj A"]
    assert np.allclose(up_gate["diagonal"], [s, 0], atol=1e-4)


def test_abs_cos_ignores_the_sign_of_a_factor_and_signed_keeps_it():
    a, b = geometry(_vectors(1.0)), geometry(_vectors(-1.0))
    assert a["cross_projection"] == b["cross_projection"] and a["across_layers"] == b["across_layers"]
    signed = geometry(_vectors(-1.0), absolute=False)
    assert signed["cross_projection"]["up_proj A vs down_proj B"]["matrix"][0][0] == pytest.approx(-1 / math.sqrt(2),
                                                                                                   abs=1e-4)


def test_factors_of_different_spaces_are_not_compared():
    v = _vectors()
    assert cross_projection(v, ("up_proj", "B"), ("down_proj", "B"), [0, 1]) is None  # d_ff vs d_model
    del v[(1, "gate_proj")]
    assert cross_projection(v, ("up_proj", "A"), ("gate_proj", "A"), [0, 1]) is None


def test_random_abs_cos_matches_sampling():
    assert random_abs_cos(2) == pytest.approx(2 / math.pi)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20000, 64, generator=g), torch.randn(20000, 64, generator=g)
    sampled = torch.nn.functional.cosine_similarity(x, y).abs().mean().item()
    assert sampled == pytest.approx(random_abs_cos(64), rel=0.02)
    assert random_abs_cos(64) == pytest.approx(math.sqrt(2 / (math.pi * 64)), rel=0.02)


def test_weight_geometry_script_writes_then_skips(isolated_root):
    make_run()
    script = load_script("4_lora_interventions/4.4_weight_geometry.py")
    cfg = config_from_profile(script.GeometryConfig, "weight_geometry", "test", run="t")
    script.main(cfg)
    out = results_dir("test", K.GEOMETRY_STAGE, "t")
    saved = read_json(out / K.GEOMETRY_JSON)
    assert saved["identity"]["run"] == "t" and saved["layers"] == [0, 1]
    for name in ("norms", "across_layers", "cross_projection", "cross_projection_same_layer"):
        for ext in ("pdf", "png"):
            assert (out / f"{K.GEOMETRY_STEM}_{name}.{ext}").is_file()
    assert {K.CONFIG_JSON, K.ARGV_JSON} <= {p.name for p in out.iterdir()}
    stamp = (out / K.GEOMETRY_JSON).stat().st_mtime_ns
    script.main(cfg)  # same run and settings: reused
    assert (out / K.GEOMETRY_JSON).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings \\(absolute\\)"):
        script.main(config_from_profile(script.GeometryConfig, "weight_geometry", "test", run="t", absolute=False))
    make_run("t", layers=(1,))  # other weights under the same name
    with pytest.raises(ValueError, match="recompute it with --overwrite"):
        script.main(cfg)


def test_missing_run_is_one_error_line(isolated_root):
    from tests.helpers import run_script

    proc = run_script(["4_lora_interventions/4.4_weight_geometry.py", "--profile", "test", "--run", "nope"],
                      check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: run 'nope' not found")
    assert "Traceback" not in proc.stderr
    assert not results_dir("test", K.GEOMETRY_STAGE).exists()


# ---------------------------------------------------------------- 4.1 attribution


@pytest.fixture
def small_peft():
    """The 2-layer test model with all 14 adapters contributing a little (B small: near-linear regime)."""
    from peft import get_peft_model

    from rank1.lora import adapter_sites, lora_config
    from rank1.models import load_model

    model = get_peft_model(load_model("random-qwen2"), lora_config([0, 1]))
    for s in adapter_sites(model):
        torch.nn.init.normal_(s.module.lora_B["default"].weight, std=1e-3)
    return model.eval(), adapter_sites(model)


def _target(pos=-1, token=7, kind="logprob"):
    from rank1.attribution import target_value
    return lambda logits_TV: target_value(logits_TV[pos], token, kind)


def test_attribution_predicts_zeroing_to_first_order(small_peft):
    from rank1.attribution import attribute, zeroing_effect
    from rank1.hooks import count_hooks

    model, sites = small_peft
    ids_T = torch.randint(0, 200, (6,))
    before = count_hooks(model)
    res = attribute(model, sites, ids_T, _target(), freeze=False)
    assert count_hooks(model) == before
    assert res.attr_ST.shape == (14, 6)
    assert torch.all(res.attr_ST[:, :] == res.acts_ST * res.grads_ST)
    predicted, actual = [], []
    for s in range(14):
        for t in range(6):
            mask = torch.zeros(14, 6, dtype=torch.bool)
            mask[s, t] = True
            actual.append(zeroing_effect(model, sites, ids_T, _target(), mask))
            predicted.append(-float(res.attr_ST[s, t]))
    assert count_hooks(model) == before
    predicted, actual = np.array(predicted), np.array(actual)
    assert np.abs(actual).max() > 1e-4  # the adapters do something
    assert np.corrcoef(predicted, actual)[0, 1] > 0.99
    assert np.abs(predicted - actual).max() < 0.05 * np.abs(actual).max()
    # causality: nothing after the target position matters
    res_mid = attribute(model, sites, ids_T, _target(pos=2), freeze=False)
    assert torch.all(res_mid.attr_ST[:, 3:] == 0) and res_mid.attr_ST[:, :3].abs().sum() > 0


def test_linearisation_keeps_values_and_freezes_attention(small_peft):
    from rank1.attribution import attribute, linearised
    from rank1.hooks import count_hooks

    model, sites = small_peft
    ids_T = torch.randint(0, 200, (5,))
    frozen = attribute(model, sites, ids_T, _target(token=3, kind="logit_diff"), freeze=True)
    plain = attribute(model, sites, ids_T, _target(token=3, kind="logit_diff"), freeze=False)
    assert frozen.target == pytest.approx(plain.target, abs=1e-5)  # same forward value
    torch.testing.assert_close(frozen.acts_ST, plain.acts_ST)
    qk = [i for i, s in enumerate(sites) if s.proj in ("q_proj", "k_proj")]
    assert torch.all(frozen.grads_ST[qk] == 0) and plain.grads_ST[qk].abs().sum() > 0
    assert not torch.allclose(frozen.grads_ST, plain.grads_ST)
    # the last position's own down_proj: between it and the logits only the final norm (frozen or not)
    before = count_hooks(model)
    with pytest.raises(RuntimeError, match="boom"), linearised(model):
        raise RuntimeError("boom")
    assert count_hooks(model) == before


def test_frozen_norm_gradient_by_hand():
    from rank1.attribution import linearised

    class ToyRMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.tensor([1.0, 2.0])), 0.0

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    norm = ToyRMSNorm()
    x = torch.tensor([3.0, 4.0], requires_grad=True)  # rms = sqrt(12.5)
    with linearised(norm, freeze_attention=False):
        y = norm(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y.detach(), torch.tensor([3.0, 8.0]) / math.sqrt(12.5))
    torch.testing.assert_close(gx, torch.tensor([1.0, 2.0]) / math.sqrt(12.5))  # weight / rms, rms held fixed


def test_attribution_script_writes_resumes_and_escapes(isolated_root, monkeypatch):
    from rank1.config import data_dir
    from rank1.synth import write_splits

    write_splits(data_dir("test"), n_train=8, n_eval=4, seed=0)
    make_run(layers=(0, 1))
    script = load_script("4_lora_interventions/4.1_attribution.py")
    cfg = config_from_profile(script.AttributionConfig, "attribution", "test", run="t", n_problems=2, n_check=2)
    script.main(cfg)
    out = results_dir("test", K.ATTRIBUTION_STAGE, "t")
    report = read_json(out / K.ATTRIBUTION_JSON)
    assert len(report["problems"]) == 2 and len(report["sites"]) == 14
    assert report["agreement"]["top_pairs"]["n"] == 4 and len(report["problems"][0]["top_adapters"]) == 10
    from safetensors.torch import load_file
    tensors = load_file(str(out / K.ATTRIBUTION_TENSORS))
    assert tensors["attr_ST_1"].shape == (14, report["problems"][1]["n_tokens"])
    html = (out / K.ATTRIBUTION_HTML_DIR / "data" / "problem_0000.js").read_text()
    assert "<" not in html and ">" not in html  # tokens such as <|im_start|> travel escaped
    for ext in ("pdf", "png"):
        assert (out / f"{K.ATTRIBUTION_STEM}.{ext}").is_file() and (out / f"{K.ATTRIBUTION_CHECK_STEM}.{ext}").is_file()
    # resume: finished problems are read back, not recomputed
    (out / K.ATTRIBUTION_JSON).unlink()
    monkeypatch.setattr(script, "attribute", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    script.main(cfg)
    assert read_json(out / K.ATTRIBUTION_JSON)["problems"] == report["problems"]
    with pytest.raises(ValueError, match="other settings \\(n_problems\\)"):
        script.main(config_from_profile(script.AttributionConfig, "attribution", "test", run="t", n_problems=3,
                                        n_check=2))
