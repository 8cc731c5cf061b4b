"""Stage 3: the SAE's split and data stream, training and resume, normalisation folding, evaluation by hand, the
splice into the model, feature collection, category densities, the stage scripts, bad input."""

import ast
import dataclasses
import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from peft import get_peft_model

from helpers import outputs_under, run_script, synthetic_store
from rank1 import constants as K
from rank1.config import REPO_ROOT, config_from_profile
from rank1.errors import OtherSettings
from rank1.sae.alive import alive_latents, training_window_alive
from rank1.sae.categories import CategoryError, category_densities, read_categories, read_explanations
from rank1.sae.config import (
    AUTOINTERP_SECTIONS,
    AutointerpConfig,
    DensitiesConfig,
    DonutConfig,
    SaeConfig,
    SaeDashboardConfig,
    SaeFeaturesConfig,
)
from rank1.sae.features import JumpReluColumns, load_features
from rank1.sae.split import SaeError, heldout_split, input_statistics, iter_batches
from rank1.sae.stage import (
    run_autointerp,
    run_categorize,
    run_collect_sae_features,
    run_compute_activation_densities,
    run_create_donut_fig,
    run_generate_sae_dashboard,
    run_train_sae,
)
from rank1.sae.train import evaluate_sae, load_sae, make_training_sae, save_inference_sae, train_sae
from rank1.store import StoreError, write_store
from rank1.topk import heapq_topk

STAGE = REPO_ROOT / "3_lora_sae"


def small_cfg(**kw):
    values = dict(expansion=2, k=2, batch_size=16, epochs=2.0, heldout_frac=0.2, checkpoint_every=3, warmup_steps=2,
                  dead_tokens=64, buffer_tokens=100, device="cpu", skip_first_tokens=1)
    values.update(kw)
    return config_from_profile(SaeConfig, "sae", "test", **values)


def jumprelu(W_enc, W_dec, threshold, b_enc=None, b_dec=None):
    """A SAELens JumpReLU SAE with the given weights."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    d_in, d_sae = W_enc.shape
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.threshold.copy_(torch.full((d_sae,), float(threshold)))
        sae.b_enc.copy_(torch.zeros(d_sae) if b_enc is None else b_enc)
        sae.b_dec.copy_(torch.zeros(d_in) if b_dec is None else b_dec)
    return sae.eval()


def identity_sae(d, threshold=0.0, scale=1.0):
    """latents relu(x) and relu(-x), decoded back with +-scale: threshold 0 and scale 1 reconstruct x exactly."""
    eye = torch.eye(d)
    return jumprelu(torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0) * scale, threshold)


# ---------------------------------------------------------------- split and stream


def test_heldout_split_is_the_last_documents(tmp_path):
    store, *_ = synthetic_store(tmp_path / "s", T=300)  # 12 documents of 25 tokens
    split = heldout_split(store, 0.2, batch_size=16, skip=1)  # 24 counted per document: ceil(0.2 x 288) = 58 -> 3 docs
    assert (split.heldout_doc, split.n_heldout, split.n_train) == (9, 72, 216)
    split0 = heldout_split(store, 0.2, skip=0)  # ceil(0.2 x 300) = 60 -> 3 documents
    assert (split0.heldout_doc, split0.n_heldout, split0.n_train) == (9, 75, 225)
    assert split.describe(store)["heldout_docs"] == 3 and split.describe(store)["skip_first_tokens"] == 1
    with pytest.raises(SaeError, match="cannot be empty"):
        heldout_split(store, 0.0)
    with pytest.raises(SaeError, match="leaves 0 training tokens, fewer than one batch of 16"):
        heldout_split(store, 0.99, batch_size=16)
    one = write_store(tmp_path / "one", [{"acts_TS": torch.ones(4, 3), "token_ids_T": torch.zeros(4, dtype=torch.int32),
                                          "doc_ids_T": torch.arange(4, dtype=torch.int32),
                                          "positions_T": torch.zeros(4, dtype=torch.int32)}],
                      [{"layer": 0, "name": "q_proj"}] * 3, {"run": "r"})
    with pytest.raises(SaeError, match="held-out slice .* is empty"):
        heldout_split(one, 0.5, skip=1)


def test_stream_is_every_training_row_once_per_epoch_and_resumes_anywhere(tmp_path):
    store, acts, _, docs = synthetic_store(tmp_path / "s", T=300)
    split = heldout_split(store, 0.2, skip=1)
    pos = torch.arange(300) % 25
    train_rows = acts[(docs < 9) & (pos >= 1)]
    stream = iter_batches(store, split, 16, seed=3, buffer_tokens=100)
    rows = torch.cat([next(stream) for _ in range(27)])  # 432 rows = 2 epochs of 216
    assert rows.dtype == torch.float32 and rows.shape == (432, 3)

    def multiset(x):
        return sorted(map(tuple, x.tolist()))

    assert multiset(rows[:216]) == multiset(train_rows) == multiset(rows[216:])
    assert not torch.equal(rows[:216], rows[216:])  # each epoch has its own order
    for start in (80, 216, 232, 300):  # a resumed stream goes on exactly where the first one was
        later = iter_batches(store, split, 16, seed=3, buffer_tokens=100, start=start)
        assert torch.equal(torch.cat([next(later) for _ in range(4)]), rows[start:start + 64])
    assert not torch.equal(next(iter_batches(store, split, 16, seed=4, buffer_tokens=100)), rows[:16])


# ---------------------------------------------------------------- training, resume, normalisation


def test_killed_training_resumes_to_the_same_sae(tmp_path, monkeypatch):
    import rank1.sae.train as sae_module

    store, *_ = synthetic_store(tmp_path / "s", T=300)
    cfg = small_cfg()
    split = heldout_split(store, cfg.heldout_frac, cfg.batch_size, cfg.skip_first_tokens)
    whole, report = train_sae(cfg, store, split, tmp_path / "a")
    assert report["steps"] == 27 and report["normalization"]["kind"] == "scalar"

    real = sae_module.iter_batches

    def dies_after_10(*args, **kw):
        for i, batch in enumerate(real(*args, **kw)):
            if i == 10:
                raise RuntimeError("killed")
            yield batch

    monkeypatch.setattr(sae_module, "iter_batches", dies_after_10)
    with pytest.raises(RuntimeError, match="killed"):
        train_sae(cfg, store, split, tmp_path / "b")
    ckpts = tmp_path / "b" / K.CHECKPOINTS_DIR
    assert [p.name for p in ckpts.iterdir() if p.is_dir()] == [str(9 * 16)]  # every 3 steps; the newest is kept
    assert (ckpts / str(9 * 16) / K.CHECKPOINT_DONE).is_file()
    monkeypatch.setattr(sae_module, "iter_batches", real)
    resumed, _ = train_sae(cfg, store, split, tmp_path / "b")
    for name, t in whole.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    with pytest.raises(OtherSettings, match="checkpoints holds partial work of other settings or inputs"):
        train_sae(small_cfg(k=3), store, split, tmp_path / "b")


def _float32_store(folder, x_TS, seed=0):
    T = x_TS.shape[0]
    part = {"acts_TS": x_TS, "token_ids_T": torch.zeros(T, dtype=torch.int32),
            "doc_ids_T": (torch.arange(T) // 25).int(), "positions_T": (torch.arange(T) % 25).int()}
    return write_store(folder, [part], [{"layer": 0, "name": p} for p in ("q_proj", "k_proj", "v_proj")],
                       {"run": "r"}, dtype="float32")


def test_saved_sae_takes_raw_activations_and_encodes_each_token_alone(tmp_path):
    """Scalar normalisation makes training blind to the activations' scale (x and 64x train the same SAE) and
    is folded into the saved weights exactly: the SAE saved from 64x reconstructs 64x what the other does."""
    from sae_lens import SAE

    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    out = {}
    for scale in (1.0, 64.0):
        store = _float32_store(tmp_path / f"s{scale}", x * scale)
        cfg = small_cfg()
        split = heldout_split(store, cfg.heldout_frac, cfg.batch_size, cfg.skip_first_tokens)
        trained, _ = train_sae(cfg, store, split, tmp_path / f"t{scale}")
        save_inference_sae(trained, tmp_path / f"sae{scale}")
        out[scale] = SAE.load_from_disk(tmp_path / f"sae{scale}").eval()
    assert out[1.0].cfg.architecture() == "jumprelu" and out[1.0].cfg.normalize_activations == "none"
    with torch.no_grad():
        torch.testing.assert_close(out[64.0](x * 64), out[1.0](x) * 64, rtol=1e-4, atol=1e-4)
        acts = out[1.0].encode(x[:50])
        alone = torch.cat([out[1.0].encode(x[i:i + 1]) for i in range(50)])
    torch.testing.assert_close(alone, acts, rtol=1e-6, atol=1e-6)  # no batch dependence
    cols = JumpReluColumns(out[1.0], [5, 0, 3], skip=1)
    shard = next(_float32_store(tmp_path / "s3", x).shards())
    got = cols(shard, slice(0, 3))
    want = out[1.0].encode(x)[:, [5, 0, 3]].detach()
    want[shard.positions_T < 1] = 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_k_larger_than_the_dictionary_and_matryoshka(tmp_path):
    with pytest.raises(SaeError, match="k=7 is larger than the dictionary .*6 latents"):
        make_training_sae(small_cfg(k=7), 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="strictly increasing"):
        small_cfg(matryoshka_widths=[4, 2])
    sae = make_training_sae(small_cfg(matryoshka_widths=[2, 4]), 3, torch.device("cpu"))
    assert sae.cfg.architecture() == "matryoshka_batchtopk" and sae.cfg.matryoshka_widths == [2, 4, 6]
    with pytest.raises(ValueError, match="heldout_frac must be in \\(0, 1\\)"):
        small_cfg(heldout_frac=0.0)


# ---------------------------------------------------------------- evaluation, by hand


def test_evaluation_equals_a_hand_computation(tmp_path):
    store, acts, _, docs = synthetic_store(tmp_path / "s", T=300)  # column 2 is never negative
    split = heldout_split(store, 0.2, skip=1)
    sae = identity_sae(3, threshold=0.5)  # x_hat = x where |x| > 0.5, else 0
    got = evaluate_sae(sae, store, split)
    pos = torch.arange(300) % 25
    x = acts[(docs >= 9) & (pos >= 1)].double()
    big = x.abs() > 0.5
    fvu = (x * ~big).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert got["n_tokens"] == 72 and got["fvu"] == pytest.approx(float(fvu), rel=1e-6)
    assert got["l0"] == pytest.approx(float(big.sum(1).double().mean()))
    fired = torch.cat([(x > 0.5).any(0), (x < -0.5).any(0)])
    assert got["n_firing"] == int(fired.sum()) and not fired[5]
    assert got["firing_frac"] == pytest.approx(float(fired.double().mean()))
    assert evaluate_sae(identity_sae(3), store, split)["fvu"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- alive, by hand


def test_alive_is_fired_within_the_last_window_rows():
    # 4 latents over 6 rows in stream order, in two batches: latent 0 fires only on row 0, latent 1 on row 3,
    # latent 2 on row 5, latent 3 never (a negative value is not a firing)
    acts = torch.zeros(6, 4)
    acts[0, 0], acts[3, 1], acts[5, 2], acts[2, 3] = 1.0, 0.5, 2.0, -1.0
    batches = [acts[:4], acts[4:]]
    assert alive_latents(batches, 4).tolist() == [True, True, True, False]  # no window: every row
    assert alive_latents(batches, 4, window=6).tolist() == [True, True, True, False]
    assert alive_latents(batches, 4, window=5).tolist() == [False, True, True, False]  # rows 1..5
    assert alive_latents(batches, 4, window=3).tolist() == [False, True, True, False]  # rows 3..5
    assert alive_latents(batches, 4, window=2).tolist() == [False, False, True, False]  # rows 4..5
    assert alive_latents(batches, 4, window=100).tolist() == [True, True, True, False]  # longer than the stream
    assert alive_latents([], 4).tolist() == [False] * 4
    with pytest.raises(ValueError, match="window must be >= 1"):
        alive_latents(batches, 4, window=0)
    with pytest.raises(ValueError, match="3 latents, expected 4"):
        alive_latents([torch.ones(2, 3)], 4)


def test_training_window_alive_replays_the_end_of_the_training_stream(tmp_path):
    store, *_ = synthetic_store(tmp_path / "s", T=300)
    cfg = small_cfg(dead_tokens=40)
    split = heldout_split(store, cfg.heldout_frac, cfg.batch_size, cfg.skip_first_tokens)
    sae = identity_sae(3, threshold=0.5)
    got = training_window_alive(sae, store, split, cfg, trained_tokens=432)
    rows = torch.cat(list(itertools.islice(iter_batches(store, split, 16, cfg.seed, cfg.buffer_tokens), 27)))
    last = rows[432 - 40:432]
    want = torch.cat([(last > 0.5).any(0), (last < -0.5).any(0)])
    assert got["latents"] == want.nonzero()[:, 0].tolist() and got["n_alive"] == int(want.sum())
    assert (got["window_tokens"], got["d_sae"]) == (40, 6) and got["alive_frac"] == pytest.approx(want.sum() / 6)
    whole = training_window_alive(sae, store, split, small_cfg(dead_tokens=10_000), trained_tokens=432)
    assert whole["window_tokens"] == 432 and whole["window_epochs"] == pytest.approx(2.0)


# ---------------------------------------------------------------- a run, its store, the stage


@pytest.fixture(scope="module")
def lora_store(tmp_path_factory):
    """A test-profile run whose adapters all contribute (random B), its training corpus and its LoRA store."""
    from rank1.activations.config import ExtractConfig
    from rank1.activations.stage import extract
    from rank1.config import data_dir, run_dir
    from rank1.lora import adapter_sites, lora_config
    from rank1.models import load_model
    from rank1.synth import write_splits

    with outputs_under(tmp_path_factory.mktemp("root")) as root:
        write_splits(data_dir("test"), n_train=24, n_eval=2, seed=0)
        torch.manual_seed(0)
        model = get_peft_model(load_model("random-qwen2"), lora_config([0, 1]))
        for s in adapter_sites(model):
            torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.3)
        folder = run_dir("a")
        model.save_pretrained(folder / K.ADAPTER_DIR)
        (folder / K.CONFIG_JSON).write_text(json.dumps({"profile": "test", "model_id": "random-qwen2"}))
        corpus = root / "data" / "test" / K.TRAIN_JSONL
        cfg = config_from_profile(ExtractConfig, "extract", "test", run=str(folder), corpus=str(corpus),
                                  out=str(root / "store"))
        extract(cfg, "lora")
    return {"run": str(folder), "store": str(root / "store"), "corpus": str(corpus)}


def test_recovered_fraction_on_constructed_losses():
    from rank1.sae.splice import recovered

    ablated, clean = np.array([3.0, 5.0]), np.array([1.0, 1.0])  # summed CE of two documents
    # (mean ablated 4 - mean spliced 2.5) / (mean ablated 4 - mean clean 1) = 0.5
    assert recovered(np.array([2.0, 3.0]), ablated, clean, n_resamples=200)["value"] == pytest.approx(0.5)
    assert recovered(clean, ablated, clean, n_resamples=200)["value"] == pytest.approx(1.0)
    assert recovered(ablated, ablated, clean, n_resamples=200)["value"] == pytest.approx(0.0)
    assert recovered(np.array([5.0, 5.0]), ablated, clean, n_resamples=200)["value"] == pytest.approx(-1 / 3)
    assert recovered(clean, clean, clean, n_resamples=200)["value"] is None  # no gap to recover


def test_loss_gap_of_exact_empty_and_mean_reconstructions(lora_store):
    from rank1.runs import resolve_run
    from rank1.sae.splice import heldout_items, loss_gap
    from rank1.store import Store

    store = Store.open(lora_store["store"])
    split = heldout_split(store, 0.3, skip=1)
    loaded = resolve_run(lora_store["run"], "test").load("fp32")
    items = heldout_items(store, split, loaded.tokenizer, 400)
    assert items and all(it["doc"] >= split.heldout_doc for it in items)
    mean = input_statistics(store, split)["mean_S"].float()
    exact = loss_gap(loaded, identity_sae(14), items, 1024, mean, skip=1)
    empty = loss_gap(loaded, identity_sae(14, scale=0.0), items, 1024, mean, skip=0)
    half = loss_gap(loaded, identity_sae(14, scale=0.5), items, 1024, mean, skip=1)
    assert exact["ce_spliced"] == exact["ce_lora"] and exact["recovered_vs_zero"]["value"] == 1.0
    assert exact["recovered_vs_mean"]["value"] == 1.0
    assert empty["ce_spliced"] == pytest.approx(empty["ce_base"], abs=1e-12) and empty["recovered_vs_zero"]["value"] \
        == pytest.approx(0.0, abs=1e-9)
    assert exact["ce_base"] > exact["ce_lora"] + 0.01 or exact["ce_base"] < exact["ce_lora"] - 0.01
    assert half["ce_spliced"] not in (half["ce_lora"], half["ce_base"])
    # an SAE that always reconstructs the training mean (no latent fires, b_dec = mean) is the mean ablation itself
    only_mean = loss_gap(loaded, jumprelu(torch.zeros(14, 28), torch.zeros(28, 14), 1.0, b_dec=mean), items, 1024,
                         mean, skip=1)
    assert only_mean["ce_spliced"] == only_mean["ce_mean"] and only_mean["recovered_vs_mean"]["value"] == 0.0
    assert only_mean["ce_mean"] not in (only_mean["ce_lora"], only_mean["ce_base"])
    g = only_mean  # its share vs zero ablation is what the mean alone keeps
    kept_by_mean = (g["ce_base"] - g["ce_mean"]) / (g["ce_base"] - g["ce_lora"])
    assert g["recovered_vs_zero"]["value"] == pytest.approx(kept_by_mean)
    assert exact["ce_mean"] == only_mean["ce_mean"]  # the mean splice does not depend on the SAE
    # independent: the model's own loss on one document (mean CE of its assistant tokens)
    one = loss_gap(loaded, identity_sae(14), items[:1], 1024, mean)
    with torch.no_grad():
        ids = torch.tensor([items[0]["input_ids"]])
        ref = loaded.model(input_ids=ids, labels=torch.tensor([items[0]["labels"]])).loss
        with loaded.model.disable_adapter():
            ref_base = loaded.model(input_ids=ids, labels=torch.tensor([items[0]["labels"]])).loss
    assert one["ce_lora"] == pytest.approx(float(ref), rel=1e-4)
    assert one["ce_base"] == pytest.approx(float(ref_base), rel=1e-4)
    with pytest.raises(SaeError, match="the mean state 3, the SAE reads 14"):
        loss_gap(loaded, identity_sae(14), items, 1024, mean[:3])


def test_stage_end_to_end_on_the_test_profile(lora_store, tmp_path):
    from sae_lens import SAE

    from rank1.store import Store

    out = tmp_path / "sae"
    cfg = config_from_profile(SaeConfig, "sae", "test", run=lora_store["run"], store=lora_store["store"],
                              out=str(out))
    folder = run_train_sae(cfg)
    for name in ("cfg.json", "sae_weights.safetensors", K.SAE_METRICS_JSON, K.SAE_TRAIN_LOG_JSON, K.CONFIG_JSON,
                 K.ARGV_JSON):
        assert (folder / name).is_file(), name
    assert not (folder / K.CHECKPOINTS_DIR).exists()
    sae = SAE.load_from_disk(folder)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (14, 28)
    metrics = json.loads((folder / K.SAE_METRICS_JSON).read_text())
    assert 0 <= metrics["heldout"]["n_firing"] <= 28 and metrics["heldout"]["n_tokens"] > 0
    g = metrics["loss_gap"]
    assert g["n_tokens"] > 0 and {"recovered_vs_zero", "recovered_vs_mean"} <= set(g)
    vs_mean = (g["ce_mean"] - g["ce_spliced"]) / (g["ce_mean"] - g["ce_lora"])
    assert g["recovered_vs_mean"]["value"] == pytest.approx(vs_mean)
    alive = metrics["alive"]
    assert alive["n_alive"] == len(alive["latents"]) and alive["window_tokens"] == min(cfg.dead_tokens,
                                                                                      metrics["training"]["tokens"])
    stamp = (folder / K.CONFIG_JSON).stat().st_mtime_ns
    lines = []
    assert run_train_sae(cfg, report=lines.append) == folder  # skips, and reports the saved metrics again
    assert (folder / K.CONFIG_JSON).stat().st_mtime_ns == stamp
    h = metrics["heldout"]
    assert len(lines) == 1 and lines[0].startswith(f"SAE: {folder}\nheld-out ({h['n_tokens']} tokens): FVU "
                                                   f"{h['fvu']:.4f}") and "loss-gap share" in lines[0]
    with pytest.raises(OtherSettings, match=r"sae/config.json was made with other settings or inputs \(k: 4 there, 3 "
                                            r"now\); pass --overwrite to retrain it, or --out DIR"):
        run_train_sae(config_from_profile(SaeConfig, "sae", "test", run=lora_store["run"], store=lora_store["store"],
                                          out=str(out), k=3))
    assert (folder / K.CONFIG_JSON).stat().st_mtime_ns == stamp

    fcfg = config_from_profile(SaeFeaturesConfig, "sae_features", "test", run=lora_store["run"],
                               store=lora_store["store"], sae=str(folder), out=str(tmp_path / "features"))
    res, latents = load_features(run_collect_sae_features(fcfg))
    stamp = (tmp_path / "features" / K.CONFIG_JSON).stat().st_mtime_ns
    assert run_collect_sae_features(fcfg) == tmp_path / "features"  # same SAE, store and settings: skipped
    assert (tmp_path / "features" / K.CONFIG_JSON).stat().st_mtime_ns == stamp
    with pytest.raises(OtherSettings, match=r"features/config.json was made with other settings or inputs "
                                            r"\(settings.k: \d+ there, 4 now\); pass --overwrite"):
        run_collect_sae_features(dataclasses.replace(fcfg, k=4))
    store = Store.open(lora_store["store"])
    x = torch.cat([sh.acts_TS.float() for sh in store.shards()])
    pos = torch.cat([sh.positions_T for sh in store.shards()])
    with torch.no_grad():
        enc = sae.encode(x)
    enc[pos < 1] = 0.0
    # the features are 3.0's alive latents: those that fired on the last window tokens of the training stream
    split = heldout_split(store, cfg.heldout_frac, cfg.batch_size, cfg.skip_first_tokens)
    total, window = metrics["training"]["tokens"], alive["window_tokens"]
    stream = itertools.islice(iter_batches(store, split, cfg.batch_size, cfg.seed, cfg.buffer_tokens),
                              total // cfg.batch_size)
    with torch.no_grad():
        fired_in_window = (sae.encode(torch.cat(list(stream))[total - window:]) > 0).any(0)
    alive = fired_in_window.nonzero()[:, 0].tolist()
    assert alive and alive == metrics["alive"]["latents"] and (enc[:, alive] > 0).any(0).all()
    assert [f["latent"] for f in res.features] == alive and all(f["polarity"] == 1 for f in res.features)
    meta = json.loads((tmp_path / "features" / K.CONFIG_JSON).read_text())
    assert meta["n_alive"] == len(alive) and meta["n_firing_in_store"] == int((enc > 0).any(0).sum())
    assert latents["firing_count_L"].tolist() == (enc > 0).sum(0).tolist()
    assert res.tensors["active_count_F"].tolist() == [(enc[:, i] > 0).sum().item() for i in alive]
    ref = heapq_topk(enc[:, alive].numpy(), fcfg.k)
    for f in range(len(alive)):
        assert res.tensors["top_value_FK"][f, 0].item() == pytest.approx(ref[f][0][0], rel=1e-5)
        assert res.features[f]["activation_mass"] == pytest.approx(float(enc[:, alive[f]].double().sum()), rel=1e-5)
    assert int(latents["n_tokens"]) == int((pos >= 1).sum())

    # 3.3.2 / 3.3.3 without categories, then with them
    interp = tmp_path / "interp"
    interp.mkdir()
    dcfg = config_from_profile(DensitiesConfig, "sae_densities", "test", run=lora_store["run"],
                               features=str(tmp_path / "features"), autointerp=str(interp))
    with pytest.raises(CategoryError, match="categories.json is missing: .*3.3.1_categorize.py"):
        run_compute_activation_densities(dcfg)
    ncfg = config_from_profile(DonutConfig, "sae_donut", "test", run=lora_store["run"], autointerp=str(interp))
    with pytest.raises(CategoryError, match="category_densities.json is missing: .*3.3.2_compute_activation_densities"):
        run_create_donut_fig(ncfg)
    names = [f["name"] for f in res.features]

    # 3.3.0 explains (lexicon, offline scorer on the test profile), 3.3.1 sorts into the paper's 7 categories
    from rank1.autointerp.categories import LEXICON_SCHEME, PAPER_TOP_LEVEL_SCHEME
    from rank1.autointerp.examples import build_examples
    from rank1.autointerp.explainers import strong_token_stats

    acfg = config_from_profile(AutointerpConfig, AUTOINTERP_SECTIONS, "test", run=lora_store["run"],
                               topk=str(tmp_path / "features"), out=str(interp))
    assert (acfg.n_examples, acfg.per_doc_cap) == (4, 2)  # [sae_autointerp] over [autointerp]
    with pytest.raises(CategoryError, match="explanations.jsonl is missing: .*3.3.0_autointerp.py"):
        run_categorize(acfg)
    run_autointerp(acfg)
    records = [json.loads(line) for line in (interp / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert [r["name"] for r in records] == names
    run_categorize(acfg)
    cats = json.loads((interp / K.CATEGORIES_JSON).read_text())
    assert cats["categories"] == PAPER_TOP_LEVEL_SCHEME.keys
    ok = [r["name"] for r in records if r["status"] == "ok"]
    assert ok and sorted(cats["features"]) == sorted(ok) and cats["errors"] == {}
    opt = acfg.options()
    for f, name in enumerate(names):  # recomputed: the dominant lexicon category of the strong tokens, mapped
        if name in cats["features"]:
            ex = build_examples(res, f, opt.n_examples, opt.window, opt.per_doc_cap, seed=opt.seed)
            lex = strong_token_stats(ex).categories.most_common(1)[0][0]
            assert cats["features"][name] == {"category": PAPER_TOP_LEVEL_SCHEME.from_lexicon[lex],
                                              "subcategory": LEXICON_SCHEME.names[lex]}
    stray = interp / "stray"
    stray.mkdir()
    (stray / K.AUTOINTERP_RESULTS).write_text(json.dumps({"name": "latent_9999", "status": "ok",
                                                          "explanation": "x"}) + "\n")
    with pytest.raises(CategoryError, match="explains features that 3.1 did not collect"):
        run_categorize(dataclasses.replace(acfg, out=str(stray)))
    assert not (stray / K.CATEGORIES_JSON).exists()
    run_compute_activation_densities(dcfg)
    run_create_donut_fig(ncfg)
    d = json.loads((interp / K.CATEGORY_DENSITIES_JSON).read_text())
    assert sum(c["mass_share"] for c in d["categories"].values()) == pytest.approx(1.0)
    for ext in ("pdf", "png"):
        assert (interp / f"{K.FIGURE3_STEM}.{ext}").stat().st_size > 1000

    # 3.3.1 / 3.3.2 again: the same inputs skip, other inputs are refused until --overwrite
    stamps = {name: (interp / name).stat().st_mtime_ns for name in (K.CATEGORIES_JSON, K.CATEGORY_DENSITIES_JSON)}
    run_categorize(acfg)
    run_compute_activation_densities(dcfg)
    assert {name: (interp / name).stat().st_mtime_ns for name in stamps} == stamps
    shutil.copytree(tmp_path / "features", tmp_path / "features_copy")
    with pytest.raises(OtherSettings, match=r"categories.json was made with other settings or inputs "
                                            r"\(inputs.features: .* there, .* now\); pass --overwrite"):
        run_categorize(dataclasses.replace(acfg, topk=str(tmp_path / "features_copy")))
    run_categorize(dataclasses.replace(acfg, overwrite=True))  # the same categories, in a new file
    with pytest.raises(OtherSettings, match=r"category_densities.json was made with other settings or inputs "
                                            r"\(inputs.categories_sha256: .* there, .* now\); pass --overwrite"):
        run_compute_activation_densities(dcfg)
    run_compute_activation_densities(dataclasses.replace(dcfg, overwrite=True))
    again = json.loads((interp / K.CATEGORY_DENSITIES_JSON).read_text())
    assert again["categories"] == d["categories"] and "overwrite" not in again["config"]
    lines = []
    dcfg = config_from_profile(SaeDashboardConfig, "sae_dashboard", "test", run=lora_store["run"],
                               features=str(tmp_path / "features"), autointerp=str(interp), out=str(tmp_path / "dash"))
    assert run_generate_sae_dashboard(dcfg, report=lines.append) == tmp_path / "dash"
    assert lines == [f"dashboard: {tmp_path / 'dash' / K.DASHBOARD_INDEX} ({len(names)} features; explanations for "
                     f"{len(records)}, categories for {len(cats['features'])})"]


def test_bad_inputs_fail_before_writing(lora_store, tmp_path):
    from rank1.store import Store

    def cfg(**kw):
        values = dict(run=lora_store["run"], store=lora_store["store"], out=str(tmp_path / "out"))
        values.update(kw)
        return config_from_profile(SaeConfig, "sae", "test", **values)

    with pytest.raises(StoreError, match="holds no activation store"):
        run_train_sae(cfg(store=str(tmp_path / "nowhere")))
    with pytest.raises(SaeError, match="k=100 is larger than the dictionary"):
        run_train_sae(cfg(k=100))
    with pytest.raises(SaeError, match="fewer than one batch"):
        run_train_sae(cfg(heldout_frac=0.999))
    other = tmp_path / "other_run"
    shutil.copytree(lora_store["run"], other)
    from safetensors.torch import load_file, save_file
    w = other / K.ADAPTER_DIR / "adapter_model.safetensors"
    save_file({k: v * 2 for k, v in load_file(str(w)).items()}, str(w))
    (other / K.ADAPTER_DIR / ".weights_sha256.json").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="made from run 'a'.*not from 'other_run'"):
        run_train_sae(cfg(run=str(other)))
    assert not (tmp_path / "out").exists()
    # an SAE of another width: 3 inputs, the store has 14 adapters
    small, *_ = synthetic_store(tmp_path / "small", T=300)
    c = small_cfg()
    trained, _ = train_sae(c, small, heldout_split(small, 0.2, 16, 1), tmp_path / "w")
    save_inference_sae(trained, tmp_path / "w")
    (tmp_path / "w" / K.CONFIG_JSON).write_text(json.dumps({"identity": Store.open(lora_store["store"]).identity,
                                                            "settings_key": "x"}))
    with pytest.raises(SaeError, match="reads 3 adapters, the store .* has 14"):
        load_sae(tmp_path / "w", Store.open(lora_store["store"]))
    with pytest.raises(SaeError, match="holds no finished SAE .*3.0_train_sae.py"):
        load_sae(tmp_path / "nowhere")
    proc = run_script([STAGE / "3.0_train_sae.py", "--profile", "test", "--run", lora_store["run"], "--store",
                       lora_store["store"], "--out", tmp_path / "out", "--k", "100"], check=False)
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "larger than the dictionary" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- categories


def test_category_densities_by_hand(tmp_path):
    feats = [{"name": "a", "activation_mass": 1.0, "firing_count": 10}, {"name": "b", "activation_mass": 3.0,
                                                                          "firing_count": 10},
             {"name": "c", "activation_mass": 4.0, "firing_count": 20}, {"name": "d", "activation_mass": 2.0,
                                                                          "firing_count": 60}]
    cats = {"categories": ["x", "y"], "features": {"a": {"category": "x", "subcategory": "s"},
                                                   "b": {"category": "x", "subcategory": "t"},
                                                   "c": {"category": "y", "subcategory": None}}}
    d = category_densities(feats, cats)
    assert d["categories"]["x"]["mass_share"] == pytest.approx(0.5) and d["categories"]["y"]["mass_share"] == 0.5
    assert d["categories"]["x"]["firing_share"] == pytest.approx(0.5)
    assert d["categories"]["x"]["subcategories"]["t"]["mass_share_in_category"] == pytest.approx(0.75)
    assert d["uncategorised"]["n_features"] == 1 and d["uncategorised"]["mass_share_of_all"] == pytest.approx(0.2)
    (tmp_path / K.CATEGORIES_JSON).write_text(json.dumps(cats))
    assert read_categories(tmp_path, ["a", "b", "c", "d"]) == cats
    with pytest.raises(CategoryError, match="feature 'c' is not among the SAE features"):
        read_categories(tmp_path, ["a", "b"])
    bad = {**cats, "features": {"a": {"category": "z"}}}
    (tmp_path / K.CATEGORIES_JSON).write_text(json.dumps(bad))
    with pytest.raises(CategoryError, match="feature 'a' has category 'z', not one of"):
        read_categories(tmp_path)
    (tmp_path / K.AUTOINTERP_RESULTS).write_text(
        '{"name": "a", "status": "ok", "explanation": "e", "detection": {"balanced_accuracy": 0.7}}\n'
        '{"name": "b", "status": "error", "explanation": null, "detection": null}\n')
    assert read_explanations(tmp_path) == {
        "a": {"feature": "a", "explanation": "e", "score": 0.7, "status": "ok"},
        "b": {"feature": "b", "explanation": None, "score": None, "status": "error"}}
    (tmp_path / K.AUTOINTERP_RESULTS).write_text('{"name": "a", "explanation": "e"}\n\n{"name"\n')
    with pytest.raises(CategoryError, match="explanations.jsonl:3: not valid JSON"):
        read_explanations(tmp_path)
    assert read_explanations(tmp_path / "none") == {}


SCRIPTS = [("3.0_train_sae.py", SaeConfig, "sae", run_train_sae),
           ("3.1_collect_sae_features.py", SaeFeaturesConfig, "sae_features", run_collect_sae_features),
           ("3.2_generate_sae_dashboard.py", SaeDashboardConfig, "sae_dashboard", run_generate_sae_dashboard),
           ("3.3_autointerp/3.3.0_autointerp.py", AutointerpConfig, AUTOINTERP_SECTIONS, run_autointerp),
           ("3.3_autointerp/3.3.1_categorize.py", AutointerpConfig, AUTOINTERP_SECTIONS, run_categorize),
           ("3.3_autointerp/3.3.2_compute_activation_densities.py", DensitiesConfig, "sae_densities",
            run_compute_activation_densities),
           ("3.3_autointerp/3.3.3_create_donut_fig.py", DonutConfig, "sae_donut", run_create_donut_fig)]


@pytest.mark.parametrize(("script", "cls", "section", "run"), SCRIPTS)
def test_scripts_are_thin_and_help_lists_every_flag(script, cls, section, run, capsys):
    """Each script (read, not run) defines only ``main``, which calls its ``run_<script>``, and parses its config
    of rank1.sae.config from its profile table; ``--help`` with its usage docstring lists every field."""
    from rank1.config import parse_config

    tree = ast.parse((STAGE / script).read_text())
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert defined == ["main"]
    called = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert run.__name__ in called
    parse = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "parse_config"]
    assert [ast.unparse(a) for a in parse[0].args[:2]] == [
        cls.__name__, "AUTOINTERP_SECTIONS" if section is AUTOINTERP_SECTIONS else repr(section)]
    with pytest.raises(SystemExit):
        parse_config(cls, section, ast.get_docstring(tree, clean=False), ["--help"])
    out = capsys.readouterr().out
    assert "Usage:" in out and all(f"--{f.name}" in out for f in dataclasses.fields(cls) if f.name != "profile")


@pytest.mark.parametrize("profile", ["tiny", "test", "paper"])
def test_profiles_give_valid_stage3_configs(profile):
    cfg = config_from_profile(SaeConfig, "sae", profile)
    assert cfg.settings()["k"] <= cfg.expansion * 7  # at least one layer of 7 adapters
    assert config_from_profile(SaeFeaturesConfig, "sae_features", profile).k >= 1
