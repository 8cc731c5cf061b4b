"""Stage 5 (SAE-LoRA): the adapter's forward in both hook modes, the two penalties, sparsity metrics, resume
after an interrupted training, clear errors on bad input, the device and dtype of --precision, --model_size, the
residual store written and read a shard at a time, the standard LoRA put on the base model and taken off again
(the behaviour dataset: test_behavior.py)."""

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import run_script
from rank1 import constants as K
from rank1.config import config_from_profile, data_dir
from rank1.errors import OtherSettings
from rank1.sae_lora.adapter import (
    SaeLora,
    SaeLoraError,
    alive_on,
    apply_adapter,
    check_layer,
    gini,
    hoyer,
    penalty,
    residual_cache,
    tokenize_items,
    top_share,
)
from rank1.sae_lora.behavior import behavior_splits
from rank1.sae_lora.config import SaeLoraConfig, seeded_run_name
from rank1.sae_lora.eval import paired_verdict, seed_comparison, seeds_needed, spread
from rank1.sae_lora.train import initial_adapter, load_adapter, step_batches, train_adapter


class TinySae(torch.nn.Module):
    """An SAE with the SAELens surface the adapter uses: encode (ReLU), decode (affine), W_dec, cfg.d_sae, device."""

    def __init__(self, W_enc, W_dec, b_dec):
        super().__init__()
        self.W_enc, self.W_dec = torch.nn.Parameter(W_enc), torch.nn.Parameter(W_dec)
        self.b_dec = torch.nn.Parameter(b_dec)
        self.cfg = SimpleNamespace(d_in=W_enc.shape[0], d_sae=W_enc.shape[1])

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec

    @property
    def device(self):
        return self.W_dec.device


def hand_sae():
    return TinySae(torch.tensor([[1.0, 0, 0], [0, 1, 0.4]]), torch.tensor([[1.0, 0], [0, 1], [1, 1]]),
                   torch.tensor([0.5, -0.5]))


def hand_adapter():
    ad = SaeLora(3, 1)
    with torch.no_grad():
        ad.A.copy_(torch.tensor([[3.0], [0.0], [4.0]]))  # A_hat = (0.6, 0, 0.8)
        ad.B.copy_(torch.tensor([[0.0, 2.0, 0.0]]))  # B_hat = (0, 1, 0)
        ad.s.copy_(torch.tensor([2.0]))
    return ad


def test_forward_by_hand_in_both_modes():
    sae, ad = hand_sae(), hand_adapter()
    h = torch.tensor([[[1.0, 5.0]]])  # f = (1, 5, 2); f . A_hat = 2.2; x s = 4.4; delta_f = (0, 4.4, 0)
    assert torch.allclose(ad(sae.encode(h)), torch.tensor([[[0.0, 4.4, 0.0]]]))
    resid_add = apply_adapter(h, sae, ad, "resid_add")
    assert torch.allclose(resid_add, torch.tensor([[[1.0, 9.4]]]))  # h + delta_f @ W_dec (no bias)
    # decode(f + delta) = (1, 9.4, 2) @ W_dec + b = (3.5, 10.9); the error h - decode(f) = (1, 5) - (3.5, 6.5)
    assert torch.allclose(apply_adapter(h, sae, ad, "sae_replace", keep_error=False), torch.tensor([[[3.5, 10.9]]]))
    assert torch.allclose(apply_adapter(h, sae, ad, "sae_replace", keep_error=True), resid_add)
    with torch.no_grad():
        ad.s.zero_()
    assert torch.equal(apply_adapter(h, sae, ad, "resid_add"), h)  # no update: exactly the base residual


def test_raw_penalty_falls_under_uniform_scaling_without_changing_the_function():
    torch.manual_seed(0)
    sae = TinySae(torch.randn(8, 32), torch.randn(32, 8), torch.randn(8))
    ad = SaeLora(32, 2, seed=1)
    with torch.no_grad():
        ad.s.copy_(torch.tensor([1.5, -0.7]))
    h = torch.randn(2, 5, 8)
    before = apply_adapter(h, sae, ad, "resid_add")
    raw, norm = float(penalty(ad, "raw").detach()), float(penalty(ad, "normalized").detach())
    with torch.no_grad():
        ad.A.mul_(0.01)
        ad.B.mul_(0.01)
    assert torch.allclose(apply_adapter(h, sae, ad, "resid_add"), before, atol=1e-5)
    assert float(penalty(ad, "raw").detach()) == pytest.approx(0.01 * raw, rel=1e-5)
    assert float(penalty(ad, "normalized").detach()) == pytest.approx(norm, rel=1e-5)
    # the normalized penalty is lowered only by concentrating a direction: one-hot gives its minimum, 1 each
    with torch.no_grad():
        ad.A.zero_()
        ad.A[3] = 5.0
        ad.B.zero_()
        ad.B[:, 7] = -2.0
    assert float(penalty(ad, "normalized").detach()) == pytest.approx(2 * 2.0)
    assert norm > 2 * 2.0 * 3


def test_sparsity_metrics_by_hand():
    one_hot, flat = np.eye(100)[3] * -2, np.ones(100)
    assert hoyer(one_hot) == pytest.approx(1.0) and hoyer(flat) == pytest.approx(0.0, abs=1e-12)
    assert gini(one_hot) == pytest.approx(0.99) and gini(flat) == pytest.approx(0.0, abs=1e-12)
    assert top_share(one_hot) == 1.0 and top_share(flat) == pytest.approx(0.1)
    assert gini(np.array([0.0, 0, 1, 1])) == pytest.approx(0.5)  # hand: (2*3-5)*1 + (2*4-5)*1 = 4; 4/(4*2)
    v = np.array([3.0, 4.0])  # L1/L2 = 7/5: (sqrt 2 - 1.4) / (sqrt 2 - 1)
    assert hoyer(v) == pytest.approx((math.sqrt(2) - 1.4) / (math.sqrt(2) - 1))


def test_alive_only_initialisation_is_the_same_draw_masked():
    support = torch.tensor([True, False, True, False, False])
    full, masked = SaeLora(5, 2, 0.5, seed=3), SaeLora(5, 2, 0.5, seed=3, support_F=support)
    assert torch.equal(masked.A, full.A * support[:, None]) and torch.equal(masked.B, full.B * support[None, :])
    assert masked.A[support].abs().min() > 0 and torch.equal(masked.s, torch.zeros(2))
    with pytest.raises(SaeLoraError, match="non-empty mask of 5 latents"):
        SaeLora(5, 1, support_F=torch.zeros(5, dtype=torch.bool))
    # alive on the cached residuals: f = relu(h @ W_enc); the opening token of each sequence is left out
    sae = hand_sae()  # latent 0 reads h0, latent 1 reads h1, latent 2 reads 0.4 h1
    h_cache = [torch.tensor([[5.0, 5.0], [1.0, -1.0]]), torch.tensor([[9.0, 9.0], [-1.0, -2.0], [-3.0, 0.0]])]
    assert alive_on(sae, h_cache).tolist() == [True, False, False]  # only latent 0 fires after the first token
    assert alive_on(sae, h_cache, skip=0).tolist() == [True, True, True]


def test_initial_adapter_is_rebuilt_from_the_saved_config():
    cfg = {"settings": {"rank": 2, "init_std": 0.5, "seed": 4}, "d_sae": 6, "init_support": [1, 4]}
    again = initial_adapter(cfg)
    mask = torch.tensor([False, True, False, False, True, False])
    assert torch.equal(again.A, SaeLora(6, 2, 0.5, 4, mask).A) and torch.equal(again.B, SaeLora(6, 2, 0.5, 4, mask).B)
    assert torch.equal(initial_adapter({**cfg, "init_support": None}).A, SaeLora(6, 2, 0.5, 4).A)


def _run(penalty, weight, seed, inside, hoyer):
    return {"penalty": penalty, "l1_weight": weight, "seed": seed, "inside": {"rate": {"value": inside}},
            "outside": {"rate": {"value": 0.0}}, "final_ce": 1.0, "sparsity": {"A": {"hoyer": hoyer},
                                                                                "B": {"hoyer": 0.2}},
            "alive_mass": {"A": 0.5}, "norm_A_raw": 10.0}


def test_seed_comparison_pairs_the_seeds_and_gives_a_verdict_only_where_the_test_can():
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3)), "min": 1.0, "max": 3.0,
                                       "n": 3}
    assert seeds_needed() == 6  # the smallest two-sided sign-flip p is 2 / 2^n: 0.0625 at 5 seeds, 0.031 at 6
    up, down = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert paired_verdict(up, down)[0] == "higher" and paired_verdict(down, up)[0] == "lower"
    verdict, test = paired_verdict(up, down)
    assert test["p_sign_flip"] == pytest.approx(2 / 64) and test["units_positive"] == 6
    assert paired_verdict([0.5, 0.1, 0.7, 0.8, 0.9, 1.0], down)[0] == "cannot tell"  # seed 1 goes the other way
    assert paired_verdict(up[:4], down[:4])[0] == "underpowered"  # 4 of 4 seeds agree: p 0.125 at best
    assert paired_verdict([1.0], [0.0]) == ("underpowered", None)
    # a seed effect shared by both groups: pooled, the groups overlap; paired, every seed shows the same +0.01
    base = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    assert paired_verdict([b + 0.01 for b in base], base)[0] == "higher"

    def group(penalty, weight, inside, hoyer):  # one run per seed 0..n-1
        return [_run(penalty, weight, s, i, h) for s, (i, h) in enumerate(zip(inside, hoyer, strict=True))]

    l1_0 = group("raw", 0.0, (1.0, 0.9, 0.95, 0.92, 1.0, 0.9), (0.2, 0.3, 0.25, 0.22, 0.21, 0.26))
    raw = group("raw", 0.01, (0.0, 0.1, 0.05, 0.0, 0.0, 0.1), (0.4, 0.2, 0.5, 0.35, 0.3, 0.3))
    norm = group("normalized", 0.01, (0.2, 1.0, 0.6, 0.4, 0.9, 0.95), (0.6, 0.7, 0.8, 0.65, 0.6, 0.7))
    comp = seed_comparison({f"r{i}": r for i, r in enumerate(l1_0 + raw + norm)})
    c = comp["groups"]
    assert list(c) == ["l1_0", "normalized_l1_0.01", "raw_l1_0.01"] and c["l1_0"]["seeds"] == list(range(6))
    assert comp["powered"] and comp["seeds_needed"] == 6 and c["raw_l1_0.01"]["paired_seeds"] == list(range(6))
    assert c["raw_l1_0.01"]["measures"]["inside_rate"]["mean"] == pytest.approx(0.25 / 6)
    assert c["raw_l1_0.01"]["vs_l1_0"]["inside_rate"] == "lower"  # lower on every seed
    assert c["normalized_l1_0.01"]["vs_l1_0"]["inside_rate"] == "cannot tell"  # 2 seeds of 6 go up
    assert c["normalized_l1_0.01"]["vs_l1_0"]["hoyer_A"] == "higher" and "vs_l1_0" not in c["l1_0"]
    assert c["raw_l1_0.01"]["vs_l1_0"]["hoyer_A"] == "cannot tell"  # seed 1: 0.2 against 0.3
    assert c["raw_l1_0.01"]["vs_l1_0"]["final_ce"] == "cannot tell"  # equal everywhere
    assert c["raw_l1_0.01"]["paired"]["hoyer_A"]["units_positive"] == 5
    four = seed_comparison({f"r{i}": r for i, r in enumerate(l1_0[:4] + raw[:4])})  # the same runs, 4 seeds
    assert four["powered"] is False and four["groups"]["raw_l1_0.01"]["vs_l1_0"]["inside_rate"] == "underpowered"
    # only the seeds both groups have are paired; without an l1 = 0 group there is nothing to compare
    odd = seed_comparison({f"r{i}": r for i, r in enumerate(l1_0 + raw[:3])})
    assert odd["groups"]["raw_l1_0.01"]["paired_seeds"] == [0, 1, 2] and odd["powered"] is False
    alone = seed_comparison({f"r{i}": r for i, r in enumerate(raw)})
    assert alone["powered"] is None and "vs_l1_0" not in alone["groups"]["raw_l1_0.01"]


def test_seeds_multiply_the_runs_and_are_checked():
    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test", seeds=[0, 1])
    assert cfg.seeded_runs() == [("raw", 0.0, 0), ("raw", 0.01, 0), ("normalized", 0.01, 0), ("raw", 0.0, 1),
                                 ("raw", 0.01, 1), ("normalized", 0.01, 1)]
    assert seeded_run_name("normalized", 0.01, 1) == "normalized_l1_0.01_seed1"
    with pytest.raises(ValueError, match="--seeds must hold distinct seeds"):
        config_from_profile(SaeLoraConfig, "sae_lora", "test", seeds=[1, 1])
    with pytest.raises(ValueError, match="--seeds must hold distinct seeds"):
        config_from_profile(SaeLoraConfig, "sae_lora", "test", seeds=[])
    with pytest.raises(ValueError, match="--init must be one of"):
        config_from_profile(SaeLoraConfig, "sae_lora", "test", init="zeros")


def _setup(tiny_tok, **overrides):
    from rank1.decoder import LayerRunner
    from rank1.models import load_model

    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test", **overrides)
    model = load_model("random-qwen2").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    runner = LayerRunner(model)
    train, _ = behavior_splits(cfg.n_train, 1, cfg.data_seed)
    items = tokenize_items(tiny_tok, train)
    pad = tiny_tok.pad_token_id
    torch.manual_seed(0)
    d = runner.config.hidden_size
    sae = TinySae(torch.randn(d, 2 * d) / 8, torch.randn(2 * d, d) / 8, torch.zeros(d))
    return cfg, runner, sae, items, pad, residual_cache(runner, items, cfg.layer, pad)


def test_resume_after_interrupt_gives_the_same_adapter(tiny_tok, isolated_root):
    cfg, runner, sae, items, pad, h = _setup(tiny_tok, epochs=2.0, checkpoint_every=2)
    assert len(step_batches(len(items), cfg)) == 4
    ident = {"data_sha256": "x"}
    whole = train_adapter(cfg, "normalized", 0.01, runner, sae, items, h, pad, isolated_root / "whole", ident)

    def kill_at_3(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(cfg, "normalized", 0.01, runner, sae, items, h, pad, isolated_root / "cut", ident, kill_at_3)
    assert not (isolated_root / "cut" / K.SAE_LORA_CONFIG).exists()  # unfinished: no config, resumable
    assert (isolated_root / "cut" / K.CHECKPOINTS_DIR / "2" / K.CHECKPOINT_DONE).is_file()
    with pytest.raises(OtherSettings, match="checkpoints holds partial work of other settings or inputs"):
        train_adapter(cfg, "raw", 0.01, runner, sae, items, h, pad, isolated_root / "cut", ident)
    assert (isolated_root / "cut" / K.CHECKPOINTS_DIR / "2" / K.CHECKPOINT_DONE).is_file()  # kept
    resumed = train_adapter(cfg, "normalized", 0.01, runner, sae, items, h, pad, isolated_root / "cut", ident)
    a, _ = load_adapter(whole)
    b, meta = load_adapter(resumed)
    for k in ("A", "B", "s"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.s, torch.zeros(1))  # it trained
    assert meta["settings"]["penalty"] == "normalized" and meta["steps"] == 4
    log_a = json.loads((whole / K.SAE_LORA_LOG).read_text())
    assert log_a == json.loads((resumed / K.SAE_LORA_LOG).read_text()) and len(log_a) == 4
    with pytest.raises(OtherSettings, match=r"adapter_config.json was made with other settings or inputs "
                                            r"\(settings.penalty: \"normalized\" there, \"raw\" now\); pass "
                                            r"--overwrite to retrain it, or another --name"):
        train_adapter(cfg, "raw", 0.01, runner, sae, items, h, pad, whole, ident)


def test_bad_layer_and_width_give_one_clear_error(tiny_tok):
    from rank1.sae_lora.resid_sae import check_sae_width

    _, runner, sae, *_ = _setup(tiny_tok)
    with pytest.raises(SaeLoraError, match=r"--layer 2 is out of range: the model has decoder layers 0..1"):
        check_layer(runner, 2)
    with pytest.raises(SaeLoraError, match="width 64, the model's residual stream has 576"):
        check_sae_width(sae, 576, "x")
    with pytest.raises(ValueError, match="--mode"):
        config_from_profile(SaeLoraConfig, "sae_lora", "test", mode="add")


def test_script_rejects_a_bad_layer_without_writing(isolated_root):
    proc = run_script(["5_sae_latent_lora/5.1_train_residual_sae.py", "--profile", "test", "--layer", "7"],
                      check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: --layer 7 is out of range: the model has decoder "
                                                    "layers 0..1")
    assert not (isolated_root / "results").exists()


@pytest.mark.slow
def test_stage_end_to_end_on_the_test_profile(isolated_root):
    from rank1.synth import write_splits

    write_splits(data_dir("test"), 40, 4, 0)
    argv = ["--profile", "test"]
    from rank1.config import parse_config
    from rank1.sae_lora import stage

    cfg = parse_config(SaeLoraConfig, "sae_lora", "", argv)
    for run in (stage.run_make_behavior_dataset, stage.run_train_residual_sae, stage.run_train_sae_lora,
                stage.run_train_standard_lora, stage.run_analyze):
        run(cfg)
    res = json.loads((cfg.folder() / K.SAE_LORA_RESULTS).read_text())
    assert set(res["sae_lora_runs"]) == {f"{r}_seed{s}" for r in ("l1_0", "raw_l1_0.01", "normalized_l1_0.01")
                                         for s in (0, 1)}
    groups = res["comparison"]["groups"]
    assert set(groups) == {"l1_0", "raw_l1_0.01", "normalized_l1_0.01"} and groups["l1_0"]["seeds"] == [0, 1]
    assert {"base", "standard_lora"} <= set(res["variants"])
    assert 0 <= res["sae"]["heldout"]["fvu"] < 2 and "recovered_vs_mean" in res["sae"]["splice"]
    for stem in (K.SAE_LORA_SWEEP_STEM, K.SAE_LORA_WEIGHTS_STEM):
        assert (cfg.folder() / f"{stem}.png").is_file() and (cfg.folder() / f"{stem}.pdf").is_file()
    # a rerun of the finished stage does no work: no residual cache for finished adapters, no new analysis
    import rank1.sae_lora.eval

    def no_work(*_a, **_k):
        raise AssertionError("a finished step recomputed its residual cache")

    mtime = (cfg.folder() / K.SAE_LORA_RESULTS).stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage, "residual_cache", no_work)
        mp.setattr(rank1.sae_lora.eval, "residual_cache", no_work)
        for run in (stage.run_train_sae_lora, stage.run_analyze):
            run(cfg)
    assert (cfg.folder() / K.SAE_LORA_RESULTS).stat().st_mtime_ns == mtime
    # the same data file formatted another way (the old rule: "Answer: " unless the attempt starts with it) gives
    # other training tokens: the finished adapters are refused, not reused
    import rank1.data

    def old_rule(trace, attempt):
        attempt = attempt if attempt.startswith("Answer:") else "Answer: " + attempt
        return f"{rank1.data.THINK_TAG}\n{trace.strip()}\n{rank1.data.ANSWER_TAG}\n{attempt.strip()}"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rank1.data, "assistant_text", old_rule)
        with pytest.raises(OtherSettings, match=r"other settings or inputs \(settings.tokens_sha256: \""):
            stage.run_train_sae_lora(cfg)


@pytest.mark.parametrize("script", ["5.0_make_behavior_dataset.py", "5.4_analyze.py"])
def test_help(script):
    out = run_script([f"5_sae_latent_lora/{script}", "--help"]).stdout
    assert "usage:" in out and "--sweep_l1" in out


# ---------------------------------------------------------------- precision, device and model size


def test_auto_precision_on_a_cpu_is_fp32_and_bf16_there_is_autocast(monkeypatch):
    from rank1.sae_lora import stage

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test")
    assert cfg.precision == "auto"
    base = stage.load_base(cfg)
    assert base.device == torch.device("cpu") and not base.autocast_bf16
    assert {p.dtype for p in base.model.parameters()} == {torch.float32}
    assert base.describe() == {"device": "cpu", "dtype": "float32", "autocast_bf16": False}
    forced = stage.load_base(dataclasses.replace(cfg, precision="bf16"))  # a CPU keeps fp32 weights
    assert forced.autocast_bf16 and {p.dtype for p in forced.model.parameters()} == {torch.float32}
    with forced.autocast():
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match=r"--precision must be one of \('auto', 'bf16', 'fp32'\), got 'fp16'"):
        dataclasses.replace(cfg, precision="fp16")


def test_on_a_gpu_the_weights_load_straight_onto_it_in_the_precision_dtype(monkeypatch):
    from rank1.sae_lora import stage

    class Hub(torch.nn.Module):  # stands for a downloaded model; records where it is moved
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def to(self, *args, **kwargs):
            self.moved_to = args
            return self

    calls = []

    def spy(model_id, dtype=torch.float32, **kwargs):
        calls.append((model_id, dtype, kwargs))
        return Hub()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(stage, "load_model", spy)
    model = stage.load_frozen("Qwen/Qwen2.5-7B-Instruct", "auto")
    assert calls == [("Qwen/Qwen2.5-7B-Instruct", torch.bfloat16, {"device_map": {"": "cuda"}})]
    assert model.moved_to == (torch.device("cuda"),) and not model.w.requires_grad and not model.training
    stage.load_frozen("Qwen/Qwen2.5-7B-Instruct", "fp32")
    assert calls[-1][1:] == (torch.float32, {"device_map": {"": "cuda"}})


def test_bf16_weights_run_on_the_float32_cache_and_train_a_float32_adapter(tiny_tok, monkeypatch):
    """The dtypes of the GPU path, on a CPU: bf16 weights; the cached residual, the SAE and the adapter float32."""
    from rank1.sae_lora import stage
    from rank1.sae_lora.train import accumulate_ce

    cfg, runner32, sae, items, pad, h32 = _setup(tiny_tok)
    monkeypatch.setattr(stage, "device_and_dtype", lambda precision: (torch.device("cpu"), torch.bfloat16, False))
    base = stage.load_base(cfg)
    assert {p.dtype for p in base.model.parameters()} == {torch.bfloat16} and base.describe()["dtype"] == "bfloat16"
    h16 = residual_cache(base.runner, items, cfg.layer, pad)
    assert {h.dtype for h in h16} == {torch.float32}
    assert torch.allclose(torch.cat(h16), torch.cat(h32), rtol=0.05, atol=0.05)
    totals = []
    for runner, h in ((base.runner, h16), (runner32, h32)):
        ad = SaeLora(sae.cfg.d_sae, 1, seed=0)
        with torch.no_grad():
            ad.s.fill_(1.0)
        totals.append(accumulate_ce(cfg, ad, runner, sae, items, h, pad, [0, 1]))
        assert ad.A.grad.dtype == torch.float32 and float(ad.A.grad.abs().sum()) > 0
    (ce16, n16), (ce32, n32) = totals
    assert n16 == n32 and ce16 / n16 == pytest.approx(ce32 / n32, rel=0.02)


def test_model_size_fills_the_model_and_the_profile_gives_model_corpus_and_precision(monkeypatch):
    from rank1.config import parse_config
    from rank1.sae_lora.stage import standard_lora_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test", model="Qwen/Qwen2.5-{size}-Instruct",
                              model_size="7B")
    assert cfg.model_id == "Qwen/Qwen2.5-7B-Instruct"
    test = config_from_profile(SaeLoraConfig, "sae_lora", "test")
    assert (test.model_id, test.dataset) == ("random-qwen2", "synthetic")
    paper = parse_config(SaeLoraConfig, "sae_lora", "", ["--profile", "paper"])
    assert (paper.model, paper.model_size) == ("Qwen/Qwen2.5-{size}-Instruct", "32B")  # the size of [train]
    assert paper.model_id == "Qwen/Qwen2.5-32B-Instruct"
    assert (paper.dataset, paper.precision) == ("simplescaling/s1K-1.1", "auto")  # the profile's corpus
    seven = parse_config(SaeLoraConfig, "sae_lora", "", ["--profile", "paper", "--model_size", "7B"])
    assert seven.model_id == "Qwen/Qwen2.5-7B-Instruct"
    tcfg = standard_lora_config(seven)  # 5.3: the same model, in the precision auto resolves to here
    assert (tcfg.model_id, tcfg.precision) == ("Qwen/Qwen2.5-7B-Instruct", "fp32")
    with pytest.raises(ValueError, match=r"model 'Qwen/Qwen2.5-\{size\}-Instruct' has a \{size\} placeholder: "
                                         r"pass --model_size"):
        config_from_profile(SaeLoraConfig, "sae_lora", "test", model="Qwen/Qwen2.5-{size}-Instruct")
    with pytest.raises(ValueError, match="--model_size given but model 'random-qwen2' has no"):
        config_from_profile(SaeLoraConfig, "sae_lora", "test", model_size="7B")


# ---------------------------------------------------------------- the residual store, a shard at a time


def _store(tiny_tok, folder, monkeypatch=None, shard_tokens=128):
    """The residual store of the test profile's corpus at layer 1 in shards of about ``shard_tokens`` tokens; with
    ``monkeypatch``, also how many shards were on disk each time the next one started."""
    from rank1.decoder import LayerRunner
    from rank1.models import load_model
    from rank1.sae_lora import resid_sae
    from rank1.synth import write_splits

    write_splits(data_dir("test"), 40, 4, 0)
    runner = LayerRunner(load_model("random-qwen2").eval())
    on_disk = []
    if monkeypatch is not None:
        real = resid_sae.residual_cache

        def spy(*args, **kwargs):
            on_disk.append(len(list((folder / K.STORE_SHARDS_DIR).glob("*.safetensors"))))
            return real(*args, **kwargs)

        monkeypatch.setattr(resid_sae, "residual_cache", spy)
    store = resid_sae.extract_residual_store(runner, tiny_tok, str(data_dir("test") / K.TRAIN_JSONL), 1, 1200,
                                             shard_tokens, folder, resid_sae.base_identity("random-qwen2"))
    return store, runner, on_disk


def test_residual_store_is_written_a_shard_at_a_time_and_holds_the_residual(tiny_tok, isolated_root, monkeypatch):
    store, runner, on_disk = _store(tiny_tok, isolated_root / "store", monkeypatch)
    n = len(store.manifest["shards"])
    assert n >= 4 and on_disk == list(range(n))  # every shard is on disk before the next one is computed
    model = runner.body  # the residual entering layer 1 = the hidden state after layer 0 of the model's own forward
    with torch.no_grad():
        for sh in store.shards():
            for d in sh.doc_ids_T.unique().tolist():
                rows = sh.doc_ids_T == d
                hidden = model(input_ids=sh.token_ids_T[rows].long()[None], output_hidden_states=True).hidden_states
                assert torch.allclose(sh.acts_TS[rows], hidden[1][0], atol=1e-5)
                assert sh.positions_T[rows].tolist() == list(range(int(rows.sum())))


def test_sae_training_holds_at_most_a_buffer_of_shards(tiny_tok, isolated_root, monkeypatch):
    import rank1.sae.split as split_module
    from rank1.sae import heldout_split
    from rank1.sae_lora import resid_sae

    store, _, _ = _store(tiny_tok, isolated_root / "store")
    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test", sae_buffer_tokens=150, sae_epochs=2.0)
    assert resid_sae.sae_config(config_from_profile(SaeLoraConfig, "sae_lora", "test"),
                                torch.device("cpu")).buffer_tokens == 1 << 16  # the default: what 5.1 always used
    loads = []
    real = split_module._load_buffer

    def spy(store_, split_, shards, *args):
        x = real(store_, split_, shards, *args)
        loads.append((list(shards), len(x)))
        return x

    monkeypatch.setattr(split_module, "_load_buffer", spy)
    sae, report = resid_sae.train_residual_sae(cfg, store, isolated_root / "sae", torch.device("cpu"))
    split = heldout_split(store, cfg.heldout_frac, cfg.sae_batch, resid_sae.SKIP_FIRST)
    counts = split.train_per_shard
    assert report["settings"]["buffer_tokens"] == 150 and report["training"]["steps"] > 0
    assert len(loads) >= 4 and all(len(shards) < len(counts) for shards, _ in loads)
    for shards, rows in loads:  # a buffer closes at the shard that fills it: never the whole store in memory
        assert rows == sum(counts[i] for i in shards) < split.n_train
        assert rows - counts[shards[-1]] < cfg.sae_buffer_tokens
    seen: set[int] = set()
    for shards, _ in loads:  # the first epoch reads every training shard once
        if seen == {i for i, c in enumerate(counts) if c}:
            break
        assert not seen & set(shards)
        seen |= set(shards)
    assert seen == {i for i, c in enumerate(counts) if c}


def test_latents_are_computed_a_chunk_at_a_time_with_the_same_result():
    from rank1.sae_lora.resid_sae import encoded_chunks, reconstruction

    torch.manual_seed(0)
    sae = TinySae(torch.randn(8, 32), torch.randn(32, 8), torch.randn(8))
    h = torch.randn(3, 5, 8)
    chunks = list(encoded_chunks(sae, h.reshape(-1, 8), chunk=4))
    assert [len(c) for c in chunks] == [4, 4, 4, 3]
    assert torch.allclose(torch.cat(chunks), sae.encode(h.reshape(-1, 8)))
    assert torch.allclose(reconstruction(sae, h, chunk=4), sae.decode(sae.encode(h)), atol=1e-5)


def test_standard_lora_goes_on_the_base_model_and_comes_off_again(isolated_root):
    from peft import LoraConfig, get_peft_model

    from rank1.artifacts import write_json
    from rank1.models import load_model
    from rank1.sae_lora import stage

    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test")
    folder = cfg.folder() / K.STANDARD_LORA_DIR
    lora = get_peft_model(load_model("random-qwen2"), LoraConfig(r=1, target_modules=["q_proj", "down_proj"],
                                                                 layers_to_transform=[1], init_lora_weights=False))
    lora.save_pretrained(folder / K.ADAPTER_DIR)
    write_json(folder / K.CONFIG_JSON, {"layers": [1], "trainable_params": 1, "final_loss": 0.0})
    base = stage.load_base(cfg)
    ids = torch.tensor([[5, 9, 13, 2, 7]])

    @torch.no_grad()
    def logits():
        ctx = base.runner.prepare(ids, torch.ones_like(ids))
        return base.runner.logits(base.runner.run(ctx.h0_BTD, ctx)[0])

    def lora_modules():
        return [name for name, _ in base.model.named_modules() if "lora" in name]

    before = logits()
    with stage.standard_lora(cfg, base) as meta:
        assert meta["layers"] == [1] and lora_modules()
        with torch.no_grad():
            assert torch.allclose(logits(), lora.eval()(input_ids=ids).logits, atol=1e-5)  # the LoRA model
        assert not torch.allclose(logits(), before)
    assert torch.equal(logits(), before) and not lora_modules()
    with pytest.raises(RuntimeError, match="inside"), stage.standard_lora(cfg, base):
        raise RuntimeError("inside")
    assert torch.equal(logits(), before) and not lora_modules()
    with stage.standard_lora(dataclasses.replace(cfg, name="other"), base) as meta:  # 5.3 has not run there
        assert meta is None
