"""Stage 1 ablations on the 2-layer test model: the layer runner, KL by hand, cached prefix, resume,
the greedy removal, bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import make_run, run_script
from rank1 import constants as K
from rank1.ablation.config import FAMILIES, AblationConfig
from rank1.ablation.greedy import carry_fraction, greedy_removal
from rank1.ablation.plots import figure1
from rank1.ablation.stage import load_per_token, load_sample, measure, resolve_ablation_run
from rank1.ablation.sweep import draw_sample, make_batch, plan_ablations, run_sweep
from rank1.config import config_from_profile, data_dir, results_dir
from rank1.decoder import LayerRunner
from rank1.hooks import ablate_adapters, count_hooks
from rank1.synth import write_splits


@pytest.fixture
def setup(isolated_root):
    write_splits(data_dir("test"), n_train=16, n_eval=4, seed=0)
    make_run()
    cfg = config_from_profile(AblationConfig, "ablation", "test", run="t")
    run = resolve_ablation_run(cfg)
    loaded = run.load("fp32")
    indices, items, _ = load_sample(cfg, run, loaded.tokenizer)
    return cfg, run, loaded, items


def test_suffix_run_equals_full_forward_for_every_start_layer(setup):
    _, _, loaded, items = setup
    runner = LayerRunner(loaded.model)
    items = [{k: v[:128 - 25 * i] for k, v in it.items()} for i, it in enumerate(items)]  # unequal lengths
    batch = make_batch(items, [0, 1, 2, 3], loaded.tokenizer.pad_token_id, loaded.device)
    assert (batch.attention_mask_BT == 0).any(), "the sample should need padding"
    with torch.no_grad():
        full = loaded.model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT).logits
        ctx = runner.prepare(batch.input_ids_BT, batch.attention_mask_BT)
        _, cache = runner.run(ctx.h0_BTD, ctx, keep={0, 1})
        for start in (0, 1):
            h, _ = runner.run(cache[start], ctx, start=start)
            torch.testing.assert_close(runner.logits(h)[batch.attention_mask_BT.bool()],
                                       full[batch.attention_mask_BT.bool()], rtol=1e-5, atol=1e-5)


def test_plan_counts_and_first_layers(setup):
    sites = setup[2].sites
    plans = plan_ablations(sites, FAMILIES)
    assert [len([p for p in plans if p.family == f]) for f in FAMILIES] == [2, 14, 10]
    byname = {p.name: p for p in plans}
    assert byname["L1.gate_proj"].start == 1 and byname["L1"].start == 1 and byname["mlp"].start == 0
    assert len(byname["mlp"].sites) == 6 and len(byname["all"].sites) == 14


def test_one_ablation_kl_by_hand_and_direction(setup):
    _, _, loaded, items = setup
    sites = loaded.sites
    plan = next(p for p in plan_ablations(sites, ["adapter"]) if p.name == "L1.up_proj")
    with torch.no_grad():  # a large effect, so that KL(P||Q) and KL(Q||P) differ clearly
        sites[plan.sites[0]].module.lora_B["default"].weight.mul_(30)
    result = run_sweep(loaded, items[:1], [plan], cache_limit_mb=64)
    ids = torch.tensor([items[0]["input_ids"]])
    with torch.no_grad():
        p = torch.softmax(loaded.model(ids).logits[0].double(), -1).numpy()
        with ablate_adapters([sites[plan.sites[0]]]):
            q = torch.softmax(loaded.model(ids).logits[0].double(), -1).numpy()
    labels = np.array(items[0]["labels"])
    pos = np.nonzero(labels[1:] != -100)[0]
    by_hand = np.array([sum(p[t, v] * np.log(p[t, v] / q[t, v]) for v in range(p.shape[1])) for t in pos[:5]])
    np.testing.assert_allclose(result.kl_AN[0, :5], by_hand, rtol=1e-4, atol=1e-9)
    reverse = np.array([np.sum(q[t] * np.log(q[t] / p[t])) for t in pos[:5]])
    # KL is asymmetric: the reverse direction is further from the stored values than rounding can explain
    rounding = np.abs(result.kl_AN[0, :5] - by_hand).max()
    assert np.abs(reverse - by_hand).max() > 100 * rounding, (reverse, by_hand, rounding)
    targets = np.array(items[0]["input_ids"])[pos + 1]
    np.testing.assert_allclose(result.dce_AN[0], -np.log(q[pos, targets]) + np.log(p[pos, targets]), rtol=1e-4,
                               atol=1e-7)


def test_cached_prefix_equals_naive_and_model_is_unchanged(setup):
    _, _, loaded, items = setup
    items = items[:3]
    plans = [p for p in plan_ablations(loaded.sites, ["layer", "adapter"])
             if p.name in ("L0", "L1", "L0.up_proj", "L1.q_proj", "L1.down_proj")]
    ids = torch.tensor([items[0]["input_ids"]])
    hooks = count_hooks(loaded.model)
    with torch.no_grad():
        before = loaded.model(ids).logits
    cached = run_sweep(loaded, items, plans, cache_limit_mb=64)
    naive = run_sweep(loaded, items, plans, cache_limit_mb=64, cached_prefix=False)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, before)
    assert count_hooks(loaded.model) == hooks
    assert np.abs(cached.kl_AN - naive.kl_AN).max() <= 1e-10
    assert (cached.kl_AN > 0).all() and cached.peak_cache_bytes > 0
    # one sequence per batch (a tight cache limit) measures the same thing
    small = run_sweep(loaded, items, plans, cache_limit_mb=0.05)
    assert small.n_batches == len(items) and small.peak_cache_bytes < cached.peak_cache_bytes
    np.testing.assert_allclose(small.kl_AN, cached.kl_AN, rtol=1e-4, atol=1e-8)


def test_resume_reuses_finished_batches(setup, tmp_path, monkeypatch):
    _, _, loaded, items = setup
    plans = plan_ablations(loaded.sites, ["layer"])
    first = run_sweep(loaded, items, plans, 0.05, partial_dir=tmp_path / "p", partial_key="k")
    assert len(list((tmp_path / "p").glob("batch_*.safetensors"))) == len(items)

    def boom(*a, **k):
        raise AssertionError("a finished batch was recomputed")

    monkeypatch.setattr("rank1.ablation.sweep.sweep_batch", boom)
    again = run_sweep(loaded, items, plans, 0.05, partial_dir=tmp_path / "p", partial_key="k")
    np.testing.assert_array_equal(first.kl_AN, again.kl_AN)
    with pytest.raises(AssertionError, match="recomputed"):  # another key starts over
        run_sweep(loaded, items, plans, 0.05, partial_dir=tmp_path / "p", partial_key="other")


def test_stage_writes_json_and_side_file_then_skips(setup):
    cfg, run, loaded, items = setup
    path = measure(cfg, ["layer", "adapter"], K.ABLATION_JSON, K.ABLATION_TOKENS, "t")
    report = json.loads(path.read_text())
    assert "KL(P_full || P_ablated)" in report["kl_direction"]
    assert report["identity"] == run.identity() and len(report["sample"]["indices"]) == 4
    assert np.array(report["adapter"]["kl"]["mean"]).shape == (7, 2)
    tensors, names = load_per_token(path.parent / K.ABLATION_TOKENS)
    kl = tensors["kl"].double().numpy()
    ptr = tensors["seq_ptr"].numpy()
    seq_means = np.add.reduceat(kl, ptr[:-1], axis=1) / np.diff(ptr)
    k = names.index("L1.gate_proj")
    assert report["adapter"]["kl"]["mean"][4][1] == pytest.approx(seq_means[k].mean(), rel=1e-5)
    lo, hi = report["adapter"]["kl"]["lo"][4][1], report["adapter"]["kl"]["hi"][4][1]
    assert lo <= seq_means[k].mean() <= hi
    assert not (path.parent / K.ABLATION_PARTIAL_DIR).exists()
    # the ranking tests recomputed from the per-token side file: top layer against the runner-up
    rank = report["rankings"]["layer"]["top_vs_runner_up"]
    layer_means = np.stack([seq_means[names.index(f"L{i}")] for i in (0, 1)])
    top = int(np.argmax(layer_means.mean(1)))
    assert (rank["top"], rank["runner_up"]) == (top, 1 - top) and rank["n_units"] == 4
    assert rank["mean_diff"] == pytest.approx((layer_means[top] - layer_means[1 - top]).mean(), rel=1e-5)
    assert rank["distinct_resamples"] == 35 and rank["min_p_possible"] == 2 / 16 and not rank["separated"]
    assert report["rankings"]["projection"]["top_vs_runner_up"]["n_units"] == 4
    mtime = path.stat().st_mtime_ns
    measure(cfg, ["layer", "adapter"], K.ABLATION_JSON, K.ABLATION_TOKENS, "t")
    assert path.stat().st_mtime_ns == mtime
    written = figure1(report, path.parent / K.FIGURE1_STEM)  # from the JSON alone
    assert [p.name for p in written] == [f"{K.FIGURE1_STEM}.pdf", f"{K.FIGURE1_STEM}.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    with pytest.raises(ValueError, match=r"config.n_samples: 4 there, 3 now\); pass --overwrite"):
        measure(config_from_profile(AblationConfig, "ablation", "test", run="t", n_samples=3), ["layer"],
                K.ABLATION_JSON, None, "t")


def test_greedy_picks_the_least_important_candidate_each_step(setup):
    _, _, loaded, items = setup
    sites = loaded.sites
    mlp = [i for i, s in enumerate(sites) if s.is_mlp]
    result = greedy_removal(loaded, items[:2], mlp)
    assert sorted(result.order) == mlp and result.suffix_runs == 6 * 7 // 2
    ids = make_batch(items, [0, 1], loaded.tokenizer.pad_token_id, loaded.device)

    with torch.no_grad():
        full = loaded.model(input_ids=ids.input_ids_BT, attention_mask=ids.attention_mask_BT).logits

    def mean_kl(removed):  # independent recomputation with whole forward passes
        from rank1.metrics import kl_per_token
        with torch.no_grad():
            with ablate_adapters([sites[i] for i in removed]):
                abl = loaded.model(input_ids=ids.input_ids_BT, attention_mask=ids.attention_mask_BT).logits
        kl = kl_per_token(full[ids.rows], abl[ids.rows]).numpy()
        counts = np.bincount(ids.rows[0].numpy())
        return np.mean(np.add.reduceat(kl, np.concatenate([[0], np.cumsum(counts)[:-1]])) / counts)

    removed = []
    for k, pick in enumerate(result.order):
        best = min((c for c in mlp if c not in removed), key=lambda c: mean_kl(removed + [c]))
        assert pick == best
        removed.append(pick)
        assert result.kl_SK[:, k + 1].mean() == pytest.approx(mean_kl(removed), rel=1e-4)
        if k == 1:
            break
    lazy = greedy_removal(loaded, items[:2], mlp, rescore_every=3)  # scores reused for 3 removals
    assert lazy.suffix_runs == 6 + 3 and len(lazy.scores) == 2
    assert lazy.kl_SK[:, -1].mean() == pytest.approx(mean_kl(mlp), rel=1e-4)  # the tracked KL stays exact


def _nothing_written():
    return not results_dir("test", K.ABLATION_STAGE).exists()


def test_bad_input_fails_with_one_clear_error_and_writes_nothing(isolated_root):
    write_splits(data_dir("test"), n_train=16, n_eval=4, seed=0)
    folder = make_run("r2", rank=2)
    with pytest.raises(ValueError, match="has rank 2, this stage needs rank 1"):
        measure(config_from_profile(AblationConfig, "ablation", "test", run=str(folder)), ["layer"],
                K.ABLATION_JSON, None, "t")
    folder = make_run("holes")
    w = folder / K.ADAPTER_DIR / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(w)).items() if "layers.1.mlp.up_proj" not in k}
    save_file(tensors, str(w))
    with pytest.raises(ValueError, match="tensors missing"):
        measure(config_from_profile(AblationConfig, "ablation", "test", run="holes"), ["layer"],
                K.ABLATION_JSON, None, "t")
    make_run("ok")
    with pytest.raises(ValueError, match="sample of 99 sequences is larger than the data \\(16 records"):
        measure(config_from_profile(AblationConfig, "ablation", "test", run="ok", n_samples=99), ["layer"],
                K.ABLATION_JSON, None, "t")
    with pytest.raises(ValueError, match="--max_tokens 4096 is beyond the model's context \\(2048"):
        measure(config_from_profile(AblationConfig, "ablation", "test", run="ok", max_tokens=4096), ["layer"],
                K.ABLATION_JSON, None, "t")
    assert _nothing_written()
    proc = run_script(["1_lora_adapter_ablations/1.0_generate_ablation_data.py", "--profile", "test", "--run",
                       "ok", "--n_samples", "99"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: a sample of 99 sequences")
    assert _nothing_written()


def test_sample_is_fixed_by_its_seed():
    assert draw_sample(100, 5, 42, "x") == draw_sample(100, 5, 42, "x") != draw_sample(100, 5, 43, "x")
    assert len(set(draw_sample(100, 100, 0, "x"))) == 100


def test_ranking_tests_by_hand():
    from rank1.ablation.sweep import ranking_tests

    kl_KS = np.array([[1.0, 2, 3, 4, 5, 6], [0.5, 1, 1, 2, 2, 3], [0.0, 0, 0, 0, 0, 0]])
    r = ranking_tests(kl_KS, ["a", "b", "c"], 2000, top_k=1)
    assert r["order"] == ["a", "b", "c"] and r["mean"] == pytest.approx([3.5, 1.583333, 0.0])
    t = r["top_vs_runner_up"]
    assert (t["top"], t["runner_up"], t["units_positive"]) == ("a", "b", 6)
    assert t["p_sign_flip"] == pytest.approx(2 / 64) and t["separated"]  # all six of one sign, 2/2^6 <= 0.05
    share = r["top_share"]
    assert share["value"] == pytest.approx(21 / (21 + 9.5)) and share["uniform"] == pytest.approx(1 / 3)
    assert share["lo"] <= share["value"] <= share["hi"] and share["names"] == ["a"]
    few = ranking_tests(kl_KS[:, :4], ["a", "b", "c"], 2000)
    assert not few["top_vs_runner_up"]["separated"] and "top_share" not in few  # 3 names: no top 4


def test_carry_fraction():
    assert carry_fraction(np.array([0, 0.01, 0.05, 0.5, 1.0])) == 2  # keeping 2 leaves 0.05 <= 10% of 1.0
    assert carry_fraction(np.array([0, 0.5, 1.0])) == 2
    assert carry_fraction(np.array([0, 0.0, 0.0, 1.0])) == 1


@pytest.mark.slow
def test_all_stage_scripts_on_the_test_profile(isolated_root):
    write_splits(data_dir("test"), n_train=16, n_eval=4, seed=0)
    make_run()
    for script in ("1.0_generate_ablation_data", "1.1_visualize_ablation_results", "lora_ablation_all_by_type",
                   "iterative_mlp_ablation_by_matrix", "lora_layer_ablation_kl_visualization"):
        run_script([f"1_lora_adapter_ablations/{script}.py", "--profile", "test"])
    out = results_dir("test", K.ABLATION_STAGE, "t")
    for name in (K.ABLATION_JSON, K.ABLATION_TOKENS, K.BY_TYPE_JSON, K.ITERATIVE_JSON, K.TOKEN_KL_JSON,
                 f"{K.FIGURE1_STEM}.pdf", f"{K.BY_TYPE_STEM}.png", f"{K.ITERATIVE_STEM}.png", f"{K.TOKEN_KL_STEM}.png",
                 K.CONFIG_JSON, K.ARGV_JSON):
        assert (out / name).is_file(), name
    greedy = json.loads((out / K.ITERATIVE_JSON).read_text())
    assert len(greedy["order"]) == 6 and len(greedy["curve"]["kl"]["mean"]) == 7
    by_type = json.loads((out / K.BY_TYPE_JSON).read_text())
    assert by_type["source"] == K.ABLATION_JSON and by_type["type"]["names"][-3:] == ["mlp", "attn", "all"]
