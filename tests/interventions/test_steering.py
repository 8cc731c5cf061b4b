"""Stage 4.0's random-direction control and the onset CI: hand-computed on constructed curves, checked on the
2-layer test model, and the driver's artifact holding both the LoRA and the control curves."""

import numpy as np
import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file

from helpers import make_run
from rank1 import constants as K
from rank1.artifacts import read_json, write_json
from rank1.capture import decoder_layers
from rank1.config import config_from_profile, data_dir, results_dir
from rank1.hooks import add_hooks, count_hooks
from rank1.interventions import stage
from rank1.interventions.config import SteeringConfig
from rank1.interventions.steering import Steer, onset_ci, onset_table, random_direction, steering
from rank1.lora import adapter_sites, lora_config
from rank1.models import load_model
from rank1.report.claims import CANNOT_TELL, NA, NO, YES, steering_claims
from rank1.runs import resolve_run
from rank1.synth import write_splits


@pytest.fixture
def peft_sites():
    model = get_peft_model(load_model("random-qwen2"), lora_config([0, 1]))
    for s in adapter_sites(model):
        torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.3)
    return model.eval(), adapter_sites(model)


# ---------------------------------------------------------------- the random vectors


def test_random_direction_matches_the_norm_differs_per_seed_and_site_and_repeats_for_a_seed():
    b = torch.tensor([[3.0], [4.0], [0.0], [0.0]])  # norm 5
    r0 = random_direction(b, 0, 1, "down_proj")
    assert r0.shape == b.shape and r0.dtype == b.dtype
    assert float(r0.norm()) == pytest.approx(5.0, rel=1e-6)
    assert torch.equal(r0, random_direction(b, 0, 1, "down_proj"))  # deterministic for a seed
    for other in (random_direction(b, 1, 1, "down_proj"), random_direction(b, 0, 2, "down_proj"),
                  random_direction(b, 0, 1, "o_proj")):
        assert not torch.allclose(other, r0) and float(other.norm()) == pytest.approx(5.0, rel=1e-6)
    big = torch.ones(512, 1, dtype=torch.float64)
    cos = float(random_direction(big, 0, 0, "up_proj")[:, 0] @ big[:, 0]) / 512
    assert abs(cos) < 4 / np.sqrt(512)  # not B's direction: about N(0, 1/512)


def test_random_control_writes_the_same_change_along_the_random_vector(peft_sites):
    model, sites = peft_sites
    layers = decoder_layers(model)
    s = next(i for i, x in enumerate(sites) if (x.layer, x.proj) == (0, "down_proj"))
    site, std_S, norm_L = sites[s], torch.full((14,), 0.5), torch.tensor([2.0, 3.0])
    scaling = site.module.scaling["default"]
    outs = {}

    def grab(name):  # a module's output (a decoder layer's first element: the residual stream)
        def fn(_m, _i, out):
            outs[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return fn

    ids_BT = torch.randint(0, 200, (1, 6))
    before = count_hooks(model)
    for name, st in (("plain", None), ("lora", Steer(s, "offset", 3.0)), ("random", Steer(s, "offset", 3.0, "random"))):
        ctx = steering(sites, st, std_S, norm_L, layers, torch.tensor([4]), seed=7) if st else add_hooks()
        with torch.no_grad(), add_hooks([(site.module, grab(name))]), ctx:
            model(ids_BT)
    assert count_hooks(model) == before
    r_D = random_direction(site.module.lora_B["default"].weight, 7, 0, "down_proj")[:, 0]
    b_D = site.module.lora_B["default"].weight[:, 0].detach()
    for name, v_D in (("lora", b_D), ("random", r_D)):  # the projection output moves by 3 x 0.5 x scaling x v
        torch.testing.assert_close(outs[name][0, 4:] - outs["plain"][0, 4:], (1.5 * scaling * v_D).expand(2, -1),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(outs[name][0, :4], outs["plain"][0, :4])  # causal: positions before 4 keep
    # vector mode: the unit random vector of the site, times m x the layer's mean residual norm
    with torch.no_grad(), add_hooks([(layers[0], grab("plain_layer"))]):
        model(ids_BT)
    with torch.no_grad(), steering(sites, Steer(s, "vector", 0.5, "random"), std_S, norm_L, layers,
                                   torch.tensor([0]), seed=7), add_hooks([(layers[0], grab("vec"))]):
        model(ids_BT)  # the reader hooks after the steering addition, so it sees the steered residual
    torch.testing.assert_close(outs["vec"][0] - outs["plain_layer"][0],
                               (0.5 * 2.0 * r_D / r_D.norm()).expand(6, -1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown steering direction 'other'"), \
            steering(sites, Steer(s, "offset", 1.0, "other"), std_S, norm_L, layers):
        pass


# ---------------------------------------------------------------- the onset and its CI


def test_onset_ci_by_hand():
    ms = [100.0, 1.0, 10.0]  # any order: the onset is the smallest |m| that crosses
    # problem a crosses from m=1 on, problem b only at 100; threshold 0.6: the mean [0.5, 0.5, 1] crosses at 100
    a, b = [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]  # per magnitude in the order of ms
    res = onset_ci(ms, np.array([a, b]), 0.6, n_resamples=4000)
    assert res["value"] == 100.0 and res["n"] == 2
    # resamples: {a, a} (prob 1/4) has onset 1; {a, b}, {b, a}, {b, b} have 100; so the 95% CI is [1, 100]
    assert (res["lo"], res["hi"]) == (1.0, 100.0) and res["beyond_share"] == 0.0
    # problem c never crosses: {c, c} (prob 1/4) is beyond the sweep, so the upper bound is None
    c = [0.0, 0.0, 0.0]
    res = onset_ci(ms, np.array([a, c]), 0.4, n_resamples=4000)
    assert res["value"] == 1.0 and (res["lo"], res["hi"]) == (1.0, None)
    assert res["beyond_share"] == pytest.approx(0.25, abs=0.03)
    same = onset_ci([-3.0, 10.0], np.array([[0.0, 0.5]] * 5), 0.1, n_resamples=50)  # no spread: a point CI
    assert (same["value"], same["lo"], same["hi"]) == (10.0, 10.0, 10.0)
    assert onset_ci([1.0], np.zeros((3, 1)), 0.1, n_resamples=10)["value"] is None
    with pytest.raises(ValueError, match=r"\[problems, 2 magnitudes\]"):
        onset_ci([1.0, 2.0], np.zeros((3, 3)), 0.1)


def test_onset_table_holds_the_lora_and_the_random_onsets(peft_sites):
    _, sites = peft_sites
    records = [{"layer": 0, "proj": "down_proj", "mode": "offset", "m": m, "direction": d, "kl": float(np.mean(kl)),
                "kl_per_problem": kl}
               for d, curve in (("lora", {10.0: [0.5, 0.3], 30.0: [1.0, 2.0], 100.0: [3.0, 3.0]}),
                                ("random", {10.0: [0.0, 0.0], 30.0: [0.0, 0.05], 100.0: [0.0, 0.4]}))
               for m, kl in curve.items()]
    (row,) = onset_table(records, sites, torch.ones(14), torch.tensor([5.0, 6.0]), torch.tensor([4.0, 9.0]),
                         16.0, 0.1, n_resamples=500, random_seed=3)
    assert row["kl_onset"] == 10.0 and row["kl_onset_ci"]["lo"] == 10.0 and row["kl_onset_ci"]["hi"] == 10.0
    # random: the mean crosses only at 100 (0.2); a resample of problem 1 twice (0 everywhere) never does
    assert row["random_kl_onset"] == 100.0 and row["random_kl_onset_ci"]["hi"] is None
    assert row["random_kl_onset_ci"]["beyond_share"] == pytest.approx(0.25, abs=0.06) and row["random_seed"] == 3
    (plain,) = onset_table([r for r in records if r["direction"] == "lora"], sites, torch.ones(14),
                           torch.tensor([5.0, 6.0]), torch.tensor([4.0, 9.0]), 16.0, 0.1, n_resamples=10)
    assert "random_kl_onset" not in plain  # a sweep without the control has no control columns


# ---------------------------------------------------------------- the driver


def _fake_topk(run_name="t"):
    """What 4.0 reads from 2.1's top-k artifact: per-site moments and the run identity."""
    run = resolve_run(run_name, "test")
    folder = results_dir("test", "lora_topk", run_name)
    folder.mkdir(parents=True)
    save_file({"mean_S": torch.zeros(14), "std_S": torch.ones(14)}, str(folder / K.TOPK_TENSORS))
    write_json(folder / K.CONFIG_JSON, {"sites": [{"layer": la, "name": p} for la in (0, 1) for p in K.PROJECTIONS],
                                        "identity": run.identity()})


def test_steering_plan_twins_every_setting_with_its_random_control(peft_sites):
    _, sites = peft_sites
    kw = dict(layers=[1], scalar_magnitudes=[1.0, 50.0], vector_magnitudes=[2.0])
    plan = stage.steering_plan(config_from_profile(SteeringConfig, "steering", "test", **kw), sites)
    assert [(st.mode, st.m, st.direction) for st in plan] == [
        ("offset", 1.0, "lora"), ("offset", 1.0, "random"), ("offset", 50.0, "lora"), ("offset", 50.0, "random"),
        ("vector", 2.0, "lora"), ("vector", 2.0, "random")]
    off = stage.steering_plan(config_from_profile(SteeringConfig, "steering", "test", random_control=False, **kw),
                              sites)
    assert [st.direction for st in off] == ["lora"] * 3


def test_steering_driver_writes_both_curves_and_their_onsets():
    write_splits(data_dir("test"), n_train=8, n_eval=4, seed=0)
    make_run()
    _fake_topk()
    cfg = config_from_profile(SteeringConfig, "steering", "test", run="t", n_problems=2, n_layers=1,
                              scalar_magnitudes=[1.0, 50.0], vector_magnitudes=[1.0], random_seed=5, n_resamples=50)
    out = stage.run_steering(cfg)
    report = read_json(out / K.STEERING_JSON)
    assert [(r["mode"], r["m"], r["direction"]) for r in report["settings"]] == [
        ("offset", 1.0, "lora"), ("offset", 1.0, "random"), ("offset", 50.0, "lora"), ("offset", 50.0, "random"),
        ("vector", 1.0, "lora"), ("vector", 1.0, "random")]
    assert all(len(r["kl_per_problem"]) == 2 and r["kl"] == pytest.approx(np.mean(r["kl_per_problem"]))
               for r in report["settings"])
    lora = {r["m"]: r["kl"] for r in report["settings"] if r["mode"] == "offset" and r["direction"] == "lora"}
    rand = {r["m"]: r["kl"] for r in report["settings"] if r["mode"] == "offset" and r["direction"] == "random"}
    assert lora != rand  # another direction, another effect
    assert report["random_seed"] == 5 and report["config"]["random_seed"] == 5
    for row in report["onsets"]:
        assert {"kl_onset_ci", "random_kl_onset", "random_kl_onset_ci"} <= set(row) and row["random_seed"] == 5
        assert row["kl_onset_ci"]["value"] == row["kl_onset"] and row["kl_onset_ci"]["n"] == 2
    assert (out / f"{K.STEERING_STEM}.png").is_file() and not (out / K.STEERING_PARTIAL_DIR).exists()
    lines = (out / K.STEERING_GENERATIONS).read_text().splitlines()
    assert len(lines) == 6 * 2 and '"direction": "random"' in lines[2]


def test_the_control_claim_compares_the_onset_cis():
    def row(adapter, lora, rand):
        return {"adapter": adapter, "mode": "offset", "kl_onset": lora[0], "paper_m": 40.0, "random_seed": 0,
                "kl_onset_ci": dict(zip(("value", "lo", "hi"), lora, strict=True)),
                "random_kl_onset_ci": dict(zip(("value", "lo", "hi"), rand, strict=True))}

    st = {"config": {"scalar_magnitudes": [3, 10, 30]},
          "onsets": [row("L1.down_proj", (10.0, 3.0, 10.0), (30.0, 30.0, None)),  # below: 10 < 30
                     row("L2.down_proj", (10.0, 10.0, 30.0), (30.0, 10.0, 30.0))]}  # overlapping CIs
    onset, control = steering_claims(st, "steering/r/steering.json")
    assert control.verdict == YES and "below the control on 1, above it on 0 of 2 adapters" in control.ours
    assert "L1.down_proj 10 [3, 10] vs. 30 [30, >30]" in control.ours
    st["onsets"][0]["kl_onset_ci"]["hi"] = None  # beyond the sweep is not below anything: both CIs overlap now
    assert steering_claims(st, "s")[1].verdict == CANNOT_TELL
    st["onsets"][0]["kl_onset_ci"] = {"value": 30.0, "lo": 30.0, "hi": None}  # above the control's [1, 3]
    st["onsets"][0]["random_kl_onset_ci"] = {"value": 3.0, "lo": 1.0, "hi": 3.0}
    control = steering_claims(st, "s")[1]
    assert control.verdict == NO and "above it on 1 of 2" in control.ours  # the random vector steers earlier
    for o in st["onsets"]:
        del o["random_kl_onset_ci"]
    assert steering_claims(st, "s")[1].verdict == NA
