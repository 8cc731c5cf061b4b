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
