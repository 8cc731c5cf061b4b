"""Stage 4 (interventions) on hand-made inputs and the 2-layer test model: weight geometry, steering,
attribution, rollouts and probes."""

import math

import numpy as np
import pytest
import torch

from helpers import make_run
from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import config_from_profile, results_dir
from rank1.errors import OtherSettings
from rank1.interventions import stage
from rank1.interventions.config import (
    AttributionConfig,
    GeometryConfig,
    ProbeConfig,
    RolloutConfig,
    SteeringConfig,
)
from rank1.interventions.geometry import cross_projection, geometry, random_abs_cos

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
    cfg = config_from_profile(GeometryConfig, "weight_geometry", "test", run="t")
    out = results_dir("test", K.GEOMETRY_STAGE, "t")
    assert stage.run_weight_geometry(cfg) == out
    saved = read_json(out / K.GEOMETRY_JSON)
    assert saved["identity"]["run"] == "t" and saved["layers"] == [0, 1]
    for name in ("norms", "across_layers", "cross_projection", "cross_projection_same_layer"):
        for ext in ("pdf", "png"):
            assert (out / f"{K.GEOMETRY_STEM}_{name}.{ext}").is_file()
    assert {K.CONFIG_JSON, K.ARGV_JSON} <= {p.name for p in out.iterdir()}
    stamp = (out / K.GEOMETRY_JSON).stat().st_mtime_ns
    stage.run_weight_geometry(cfg)  # same run and settings: reused
    assert (out / K.GEOMETRY_JSON).stat().st_mtime_ns == stamp
    with pytest.raises(OtherSettings, match=r"weight_geometry.json was made with other settings or inputs "
                                            r"\(config.absolute: true there, false now\); pass --overwrite to "
                                            r"recompute it, or --out for a new folder"):
        stage.run_weight_geometry(config_from_profile(GeometryConfig, "weight_geometry", "test", run="t",
                                                      absolute=False))
    make_run("t", layers=(1,))  # other weights under the same name
    sha = r'"[0-9a-f]{36}\.\.\.'  # a sha256 as the message shortens it
    with pytest.raises(OtherSettings, match=rf"\(identity.weights_sha256: {sha} there, {sha} now\)"):
        stage.run_weight_geometry(cfg)
    assert (out / K.GEOMETRY_JSON).stat().st_mtime_ns == stamp  # a refusal writes nothing
    stage.run_weight_geometry(config_from_profile(GeometryConfig, "weight_geometry", "test", run="t", overwrite=True))
    assert read_json(out / K.GEOMETRY_JSON)["layers"] == [1]


def test_missing_run_is_one_error_line(isolated_root):
    from helpers import run_script

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
    from rank1.interventions.attribution import target_value
    return lambda logits_TV: target_value(logits_TV[pos], token, kind)


def test_attribution_predicts_zeroing_to_first_order(small_peft):
    from rank1.hooks import count_hooks
    from rank1.interventions.attribution import attribute, zeroing_effect

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
    from rank1.hooks import count_hooks
    from rank1.interventions.attribution import attribute, linearised

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
    from rank1.interventions.attribution import linearised

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
    cfg = config_from_profile(AttributionConfig, "attribution", "test", run="t", n_problems=2, n_check=2)
    real, calls = stage.attribute, []

    def crash_on_second_problem(*a, **k):  # freeze=True computes twice per problem (linearised, plain)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stage, "attribute", crash_on_second_problem)
    with pytest.raises(KeyboardInterrupt):
        stage.run_attribution(cfg)
    out = results_dir("test", K.ATTRIBUTION_STAGE, "t")
    assert [p.name for p in sorted((out / K.ATTRIBUTION_PARTIAL_DIR).glob("problem_*.json"))] == ["problem_0000.json"]
    stage.run_attribution(cfg)  # resumes: problem 0 from disk, problem 1 computed
    assert len(calls) == 5 and not (out / K.ATTRIBUTION_PARTIAL_DIR).exists()
    report = read_json(out / K.ATTRIBUTION_JSON)
    monkeypatch.setattr(stage, "attribute", real)
    stage.run_attribution(config_from_profile(AttributionConfig, "attribution", "test", run="t", n_problems=2,
                                              n_check=2, overwrite=True))
    fresh = read_json(out / K.ATTRIBUTION_JSON)
    assert fresh["problems"] == report["problems"]  # the resumed run equals an uninterrupted one
    assert len(report["problems"]) == 2 and len(report["sites"]) == 14
    assert report["agreement"]["top_pairs"]["n"] == 4 and len(report["problems"][0]["top_adapters"]) == 10
    from safetensors.torch import load_file
    tensors = load_file(str(out / K.ATTRIBUTION_TENSORS))
    assert tensors["attr_ST_1"].shape == (14, report["problems"][1]["n_tokens"])
    html = (out / K.ATTRIBUTION_HTML_DIR / "data" / "problem_0000.js").read_text()
    assert "<" not in html and ">" not in html  # tokens such as <|im_start|> travel escaped
    for ext in ("pdf", "png"):
        assert (out / f"{K.ATTRIBUTION_STEM}.{ext}").is_file() and (out / f"{K.ATTRIBUTION_CHECK_STEM}.{ext}").is_file()
    with pytest.raises(OtherSettings, match=r"other settings or inputs \(config.n_problems: 2 there, 3 now\)"):
        stage.run_attribution(config_from_profile(AttributionConfig, "attribution", "test", run="t", n_problems=3,
                                                  n_check=2))


# ---------------------------------------------------------------- 4.0 steering


def test_steering_acts_from_the_first_generated_token_on(small_peft, tiny_tok):
    from rank1.capture import decoder_layers
    from rank1.generate import Budget, StopTokens, _decode_batch
    from rank1.hooks import count_hooks, read_adapter_activations
    from rank1.interventions.steering import Steer, residual_norms, steering

    model, sites = small_peft
    for s in sites:  # strong enough to change greedy choices
        torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.5)
    layers = decoder_layers(model)
    assert len(layers) == 2
    std_S = torch.ones(14)
    prompts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\n12+3?<|im_end|>\n"]
    budget = Budget(6, 0)
    before = count_hooks(model)
    encoded = [tiny_tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    norm_L, _ = residual_norms(model, encoded)
    stops = StopTokens.of(tiny_tok)
    for st in (Steer(13, "vector", 5.0), Steer(6, "offset", 200.0)):  # layer 1 down B; layer 0 down scalar
        plain = [r.think for r in _decode_batch(model, tiny_tok, encoded, stops, budget)]
        with steering(sites, st, std_S, norm_L, layers):
            steered = [r.think for r in _decode_batch(model, tiny_tok, encoded, stops, budget)]
        assert count_hooks(model) == before
        assert steered != plain and all(steered)
        for ids, gen in zip(encoded, steered, strict=True):  # teacher forcing from position P-1 reproduces them
            with torch.no_grad(), steering(sites, st, std_S, norm_L, layers, torch.tensor([len(ids) - 1])):
                logits = model(input_ids=torch.tensor([ids + gen])).logits[0]
            assert logits[len(ids) - 1:-1].argmax(-1).tolist() == gen
    # the scalar moves by exactly m * std, at the steered positions only
    ids_BT = torch.randint(0, 200, (1, 7))
    with torch.no_grad(), read_adapter_activations(sites) as rec:
        model(ids_BT)
        ref = rec.scalars_BTS()
    with torch.no_grad(), steering(sites, Steer(2, "offset", 3.0), torch.full((14,), 0.5), norm_L, layers,
                                   torch.tensor([4])), read_adapter_activations(sites) as rec:
        model(ids_BT)  # the reader hooks after the steering edit, so it sees the steered scalar
        moved = rec.scalars_BTS()
    torch.testing.assert_close(moved[0, 4:, 2] - ref[0, 4:, 2], torch.full((3,), 1.5))
    torch.testing.assert_close(moved[0, :4], ref[0, :4])  # causal: nothing before position 4 moves
    with pytest.raises(ValueError, match="does not write to the residual stream"), \
            steering(sites, Steer(0, "vector", 1.0), std_S, norm_L, layers):
        pass
    assert count_hooks(model) == before


def test_behaviour_measures_by_hand():
    from rank1.interventions.steering import marker_rate, onset, repetition

    assert marker_rate("Wait, let me verify. Check: ok. waiter", 20) == pytest.approx(15.0)
    assert repetition([1, 2, 3, 4, 1, 2, 3, 4, 1]) == pytest.approx(1 - 4 / 6)
    assert repetition([1, 2, 3]) == 0.0
    assert onset([-30, 3, 10, 100], [0.5, 0.0, 0.2, 0.9], 0.1) == 10
    assert onset([1, 2], [0.0, 0.0], 0.1) is None


def fake_topk(run_name="t", std=1.0):
    """The two things 4.0 reads from 2.1's top-k artifact: per-site moments and the run identity."""
    from safetensors.torch import save_file

    from rank1.artifacts import write_json
    from rank1.runs import resolve_run

    run = resolve_run(run_name, "test")
    folder = results_dir("test", "lora_topk", run_name)
    folder.mkdir(parents=True)
    sites = [{"layer": la, "name": p} for la in (0, 1) for p in K.PROJECTIONS]
    save_file({"mean_S": torch.zeros(14), "std_S": torch.full((14,), std)}, str(folder / K.TOPK_TENSORS))
    write_json(folder / K.CONFIG_JSON, {"sites": sites, "identity": run.identity()})
    return folder


def test_steering_script_writes_and_resumes_to_the_same_result(isolated_root, monkeypatch):
    from rank1.config import data_dir
    from rank1.synth import write_splits

    write_splits(data_dir("test"), n_train=8, n_eval=4, seed=0)
    make_run()
    fake_topk()
    kw = dict(run="t", n_problems=2, n_layers=1, scalar_magnitudes=[1, 50], vector_magnitudes=[1], random_control=False)
    cfg = config_from_profile(SteeringConfig, "steering", "test", **kw)
    calls = []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = stage.teacher_forced_kl
    monkeypatch.setattr(stage, "teacher_forced_kl", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        stage.run_steering(cfg)
    out = results_dir("test", K.STEERING_STAGE, "t")
    assert len(list((out / K.STEERING_PARTIAL_DIR).glob("*_*.json"))) == 2 and not (out / K.STEERING_JSON).exists()
    with pytest.raises(OtherSettings, match="steering/t/.partial holds partial work of other settings or inputs; "
                                            "pass --overwrite to discard it"):
        stage.run_steering(config_from_profile(SteeringConfig, "steering", "test", **{**kw, "vector_magnitudes": [2]}))
    assert len(list((out / K.STEERING_PARTIAL_DIR).glob("*_*.json"))) == 2  # a refusal deletes nothing
    stage.run_steering(cfg)  # resumes: two settings from disk, one computed
    assert len(calls) == 4
    resumed = read_json(out / K.STEERING_JSON)
    monkeypatch.setattr(stage, "teacher_forced_kl", real)
    stage.run_steering(config_from_profile(SteeringConfig, "steering", "test", overwrite=True, **kw))
    fresh = read_json(out / K.STEERING_JSON)
    assert resumed["settings"] == fresh["settings"] and len(fresh["settings"]) == 3
    assert [(r["mode"], r["m"]) for r in fresh["settings"]] == [("offset", 1.0), ("offset", 50.0), ("vector", 1.0)]
    assert {o["mode"] for o in fresh["onsets"]} == {"offset", "vector"}
    assert fresh["unsteered"]["kl"] == 0.0 and all(r["kl"] >= 0 for r in fresh["settings"])
    assert len((out / K.STEERING_GENERATIONS).read_text().splitlines()) == 3 * 2
    assert (out / f"{K.STEERING_STEM}.png").is_file() and not (out / K.STEERING_PARTIAL_DIR).exists()
    with pytest.raises(ValueError, match="only \\('o_proj', 'down_proj'\\) write to the residual"):
        config_from_profile(SteeringConfig, "steering", "test", vector_projections=["up_proj"])


# ---------------------------------------------------------------- 4.2 rollouts and the statistics


def _rec(pid, correct, complete=True):
    return {"id": pid, "correct": correct, "complete": complete}


def test_mixed_problems_and_paired_differences_by_hand():
    from rank1.interventions.rollouts import mixed_problems, paired_differences

    records = [_rec("a", True), _rec("a", False), _rec("a", False), _rec("b", True), _rec("b", True),
               _rec("c", True), _rec("c", False, complete=False), _rec("d", False), _rec("d", True)]
    assert mixed_problems(records) == ["a", "d"]  # c's incorrect rollout hit the budget
    assert mixed_problems(records, require_complete=False) == ["a", "c", "d"]
    acts = np.arange(len(records) * 2, dtype=float).reshape(-1, 2)  # rollout i: [2i, 2i + 1]
    d = paired_differences(acts, records, ["a", "d"])
    assert np.allclose(d, [[0 - (2 + 4) / 2] * 2, [16 - 14] * 2])


def test_sign_flip_test_is_exact_on_small_samples():
    import itertools

    from rank1.stats import fdr_bh, sign_flip_test

    d = np.array([[1.0, 0.3], [2.0, -0.2], [0.5, 0.1], [1.5, -0.4], [0.7, 0.25]])
    p = sign_flip_test(d)
    for k in range(2):
        obs = abs(d[:, k].mean())
        flips = [abs((d[:, k] * s).mean()) >= obs - 1e-12 for s in itertools.product([-1, 1], repeat=5)]
        assert p[k] == pytest.approx(np.mean(flips))
    assert p[0] == pytest.approx(2 / 32)
    assert np.allclose(fdr_bh([0.01, 0.02, 0.04, 0.5]), [0.04, 0.04, 0.0533333, 0.5])


def test_compare_reports_untestable_and_sorted_features():
    from rank1.interventions.rollouts import compare

    assert compare(np.ones((1, 3)), ["x", "y", "z"], 100)["tested"] is False
    d = np.array([[1.0, 0.1], [1.2, -0.1], [0.9, 0.2], [1.1, -0.3]])
    res = compare(d, ["x", "y"], 1000)
    assert [r["feature"] for r in res["features"]] == ["x", "y"]
    assert res["features"][0]["p"] == pytest.approx(2 / 16) and res["min_p_possible"] == pytest.approx(2 / 16)
    assert res["significant"] == []  # four problems can never reach q < 0.05


def test_grouped_auc():
    from rank1.stats import grouped_auc

    y = np.array([0, 1, 0, 1, 0, 1])
    est = grouped_auc(y, np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7]), np.array([0, 0, 1, 1, 2, 2]), 200)
    assert est.value == 1.0 and est.lo == 1.0 and est.n == 3
    flipped = grouped_auc(y, -np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7]), np.array([0, 0, 1, 1, 2, 2]), 200)
    assert flipped.value == 0.0
    assert grouped_auc(np.zeros(4), np.arange(4), np.arange(4)).value is None


def test_rollouts_resume_to_the_same_records(isolated_root, tiny_tok):
    from peft import get_peft_model

    from rank1.benchmarks import Benchmark, Item, grade_integer
    from rank1.generate import Budget, HFBackend, Sampling
    from rank1.interventions.rollouts import sample_rollouts
    from rank1.lora import lora_config
    from rank1.models import load_model

    model = get_peft_model(load_model("random-qwen2"), lora_config([0, 1])).eval()
    bench = Benchmark("heldout", "x", [Item(str(i), f"What is {i}+1?", str(i + 1)) for i in range(3)], grade_integer)
    backend = HFBackend(model, tiny_tok, batch_size=4)
    args = (backend.generate, tiny_tok, bench, 3, Budget(5, 2), Sampling(1.0, 3))
    first = sample_rollouts(*args, isolated_root / "p1", problems_per_call=2)
    assert len(first) == 9 and [r["sample"] for r in first[:3]] == [0, 1, 2]
    assert all(set(r) >= {"id", "correct", "complete", "thinking", "answer", "pred"} for r in first)
    assert len({r["thinking"] for r in first if r["id"] == "0"}) > 1  # samples differ
    files = sorted((isolated_root / "p1").glob("*.jsonl"))
    assert len(files) == 2
    files[1].unlink()  # as if killed before the second group finished
    assert sample_rollouts(*args, isolated_root / "p1", problems_per_call=2) == first
    assert sample_rollouts(*args, isolated_root / "p2", problems_per_call=3) == first  # grouping does not matter


def _alternating_bench(monkeypatch):
    """Held-out problems whose grader alternates correct / incorrect, so every problem is mixed."""
    from rank1.benchmarks import Benchmark

    real = stage.heldout_problems
    calls = []

    def grade(answer, gold):
        calls.append(1)
        return None, len(calls) % 2 == 0

    def problems(*a, **k):
        b = real(*a, **k)
        return Benchmark(b.name, b.source, b.items, grade)

    monkeypatch.setattr(stage, "heldout_problems", problems)


def test_rollouts_and_probes_scripts(isolated_root, monkeypatch):
    from safetensors.torch import load_file

    from rank1.config import data_dir
    from rank1.synth import write_splits

    write_splits(data_dir("test"), n_train=8, n_eval=6, seed=0)
    make_run()
    with pytest.raises(FileNotFoundError, match="run 4_lora_interventions/4.2_counterfactual_rollouts.py first"):
        stage.run_correctness_probes(config_from_profile(ProbeConfig, "probes", "test", run="t"))
    _alternating_bench(monkeypatch)
    out = results_dir("test", K.ROLLOUTS_STAGE, "t")
    assert stage.run_counterfactual_rollouts(config_from_profile(RolloutConfig, "rollouts", "test", run="t",
                                                                 require_complete=False)) == out
    report = read_json(out / K.ROLLOUTS_JSON)
    lines = (out / K.ROLLOUTS_JSONL).read_text().splitlines()
    assert report["n_rollouts"] == len(lines) == 6 * 3
    assert report["mixed_problems"] == [str(i) for i in range(6)]
    t = load_file(str(out / K.ROLLOUTS_ACTS))
    assert t["lora_trace_RS"].shape == (18, 14) and t["mlp_last_RS"].shape[0] == 18
    assert t["correct_R"].tolist() == [i % 2 == 1 for i in range(18)]
    assert set(report["tests"]) == {"lora_trace", "lora_last", "mlp_trace", "mlp_last"}
    res = report["tests"]["lora_trace"]
    assert res["tested"] and len(res["p"]) == 14 and all(q >= p for p, q in zip(res["p"], res["q_bh"], strict=True))
    assert (out / f"{K.ROLLOUTS_STEM}.png").is_file() and not (out / K.ROLLOUTS_PARTIAL_DIR).exists()
    stage.run_correctness_probes(config_from_profile(ProbeConfig, "probes", "test", run="t", n_resamples=50,
                                                     n_permutations=9))
    rep = read_json(results_dir("test", K.PROBES_STAGE, "t") / K.PROBES_JSON)
    perm = rep["permutation"]
    assert perm["n_permutations"] == 9 and perm["null_lo"] <= perm["null_median"] <= perm["null_hi"]
    assert 0.1 <= perm["p"] <= 1  # 9 permutations: p is a multiple of 1/10
    assert res["min_p_possible"] == 2 / 2**6 and res["underpowered"]  # 6 mixed problems, 14 adapters
    assert rep["auc"]["majority class"]["value"] == 0.5 and rep["n_problems"] == 6
    assert {"thinking length", "MLP neurons (trace + last)", "adapters (trace + last)"} <= set(rep["auc"])
    assert rep["verdict"].startswith("probe AUC")
    assert (results_dir("test", K.PROBES_STAGE, "t") / f"{K.PROBES_STEM}.pdf").is_file()


def test_answer_target_is_the_first_digit_of_the_gold_answer(tiny_tok):
    from rank1.interventions.attribution import answer_target

    ids_T, pos, token = answer_target(tiny_tok, "What is 40+2?", "40+2=42", "42")
    assert pos == len(ids_T) - 1 and tiny_tok.decode([token]) == "4"
    assert tiny_tok.decode(ids_T.tolist()).endswith("<|im_start|>answer\nAnswer: ")


@pytest.mark.slow
def test_all_stage4_scripts_end_to_end_on_the_test_profile(isolated_root):
    from helpers import run_script
    from rank1.config import data_dir
    from rank1.synth import write_splits

    write_splits(data_dir("test"), n_train=8, n_eval=6, seed=0)
    make_run()
    fake_topk()
    for script in ("4.4_weight_geometry", "4.1_attribution", "4.0_steering", "4.2_counterfactual_rollouts",
                   "4.3_correctness_probes"):
        assert "--overwrite" in run_script([f"4_lora_interventions/{script}.py", "--help"]).stdout
        args = ["--no-require_complete"] if script.startswith("4.2") else ["--one_class", "error"] \
            if script.startswith("4.3") else []
        proc = run_script([f"4_lora_interventions/{script}.py", "--profile", "test", *args], check=False)
        if script.startswith("4.3"):  # the random model answers nothing right: one clear error, no artifact
            assert proc.returncode == 2 and "nothing to predict" in proc.stderr.strip().splitlines()[-1]
            assert not (results_dir("test", K.PROBES_STAGE, "t") / K.PROBES_JSON).exists()
            run_script([f"4_lora_interventions/{script}.py", "--profile", "test"])  # the profile records it
            rep = read_json(results_dir("test", K.PROBES_STAGE, "t") / K.PROBES_JSON)
            assert rep["auc"] == {} and rep["verdict"].startswith("undefined: all 18 rollouts")
        else:
            assert proc.returncode == 0, proc.stderr[-2000:]
    for stage_name, name in ((K.GEOMETRY_STAGE, K.GEOMETRY_JSON), (K.ATTRIBUTION_STAGE, K.ATTRIBUTION_JSON),
                             (K.STEERING_STAGE, K.STEERING_JSON), (K.ROLLOUTS_STAGE, K.ROLLOUTS_JSON)):
        out = results_dir("test", stage_name, "t")
        assert (out / name).is_file() and (out / K.CONFIG_JSON).is_file() and (out / K.ARGV_JSON).is_file()


def test_onset_table_puts_the_authors_recipe_in_natural_units(small_peft):
    from rank1.interventions.steering import onset_table

    _, sites = small_peft
    down0 = next(i for i, s in enumerate(sites) if (s.layer, s.proj) == (0, "down_proj"))
    records = [{"layer": 0, "proj": "down_proj", "mode": mode, "m": m, "kl": kl}
               for mode in ("offset", "vector") for m, kl in ((1.0, 0.01), (10.0, 0.5))]
    std_S = torch.full((14,), 2.0)
    rows = onset_table(records, sites, std_S, torch.tensor([5.0, 6.0]), torch.tensor([4.0, 9.0]), 16.0, 0.1)
    b_norm = float(sites[down0].module.lora_B["default"].weight.norm())
    assert [r["kl_onset"] for r in rows] == [10.0, 10.0]
    assert rows[0]["paper_m"] == pytest.approx(50 * 2 / (16 * 2))  # 50 sqrt(4) = 16 x 2 std x m
    assert rows[1]["paper_m"] == pytest.approx(50 * 2 * b_norm / 5.0)
