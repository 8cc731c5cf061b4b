"""The random-direction control of Figure 2: random, seeded, norm-matched directions at the adapter's sites,
B = 0 (the model is the base model), its own recorded exemption from the training check, and its store."""

import json
import shutil

import pytest
import torch
from peft import PeftModel

from rank1.activations.control import CONTROL_DIR, ensure_control_adapter, random_directions
from rank1.errors import OtherSettings
from rank1.lora import CONTROL_RECORD, AdapterCheckError, adapter_vectors, verify_adapter, verify_control_adapter
from rank1.models import load_model
from rank1.runs import resolve_run
from tests.helpers import make_run


@pytest.fixture
def run():
    return resolve_run(str(make_run("ctl")), "test")


def test_directions_are_seeded_random_and_norm_matched(run):
    trained = {site: a for site, (a, _) in adapter_vectors(run.weights_dir).items()}
    one, again, other = (random_directions(trained, s) for s in (0, 0, 1))
    assert set(one) == set(trained) and len(one) == 14
    cos_seeds, cos_trained = [], []
    for site, a in trained.items():
        assert torch.equal(one[site], again[site])  # deterministic for a seed
        assert float(one[site].norm()) == pytest.approx(float(a.norm()), rel=1e-5)  # matched per site
        assert not torch.allclose(one[site], other[site])  # another seed, another direction
        cos_seeds.append(float(torch.nn.functional.cosine_similarity(one[site], other[site], dim=0)))
        cos_trained.append(abs(float(torch.nn.functional.cosine_similarity(one[site], a, dim=0))))
    # near-orthogonal on average: E|cos| of independent directions in d dims is about sqrt(2 / (pi d))
    d = next(iter(trained.values())).numel()
    assert sum(cos_trained) / len(cos_trained) < 3 * (2 / (torch.pi * d)) ** 0.5
    assert max(abs(c) for c in cos_seeds) < 0.9
    # the draw of one site depends only on (seed, layer, projection)
    site = next(iter(trained))
    assert torch.equal(random_directions({site: trained[site]}, 0)[site], one[site])


def test_control_computes_the_base_model_and_is_exempt_only_by_record(run, tmp_path):
    folder = tmp_path / CONTROL_DIR
    control, fresh = ensure_control_adapter(run, folder, seed=3, overwrite=False)
    assert fresh and control.weights_dir == folder
    vec, trained = adapter_vectors(folder), adapter_vectors(run.weights_dir)
    assert all(not b.any() for _, b in vec.values())
    assert all(torch.equal(vec[s][0], d) for s, d in
               random_directions({s: a for s, (a, _) in trained.items()}, 3).items())
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    base = load_model("random-qwen2").eval()
    with torch.no_grad():
        want = base(ids).logits
        got = PeftModel.from_pretrained(load_model("random-qwen2"), folder).eval()(ids).logits
        trained_logits = PeftModel.from_pretrained(load_model("random-qwen2"), run.weights_dir).eval()(ids).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(trained_logits, want)  # the trained adapter does change the model
    # the training check still rejects an all-zero B; the control passes its own check
    with pytest.raises(AdapterCheckError, match="every lora_B .* is all zero"):
        verify_adapter(folder, [0, 1], rank=1)
    assert verify_control_adapter(folder, [0, 1]) == 14
    with pytest.raises(AdapterCheckError, match="not a random-direction control"):
        verify_control_adapter(run.weights_dir, [0, 1])  # a trained adapter without the record
    fake = tmp_path / "fake"
    shutil.copytree(run.weights_dir, fake)
    shutil.copy(folder / CONTROL_RECORD, fake / CONTROL_RECORD)
    with pytest.raises(AdapterCheckError, match="layer 0 q_proj lora_B is not zero"):
        verify_control_adapter(fake, [0, 1])  # a trained adapter with the record is still no control
    (folder / CONTROL_RECORD).rename(tmp_path / "record.json")
    with pytest.raises(AdapterCheckError, match="not a random-direction control"):
        verify_control_adapter(folder, [0, 1])
    (tmp_path / "record.json").rename(folder / CONTROL_RECORD)
    # reused with the same seed, refused with another, redrawn with --overwrite
    assert ensure_control_adapter(run, folder, seed=3, overwrite=False)[1] is False
    with pytest.raises(OtherSettings, match="seed"):
        ensure_control_adapter(run, folder, seed=4, overwrite=False)
    assert json.loads((folder / CONTROL_RECORD).read_text())["seed"] == 3
    assert ensure_control_adapter(run, folder, seed=4, overwrite=True)[1] is True
    assert json.loads((folder / CONTROL_RECORD).read_text())["seed"] == 4


def test_control_store_reads_input_dot_random_A_and_feeds_topk(run, tmp_path):
    from rank1.activations.config import ExtractConfig, TopKConfig
    from rank1.activations.stage import extract_random_control, precompute_topk
    from rank1.config import config_from_profile, data_dir
    from rank1.data import tokenize_record
    from rank1.models import tiny_tokenizer
    from rank1.store import Store, StoreError
    from rank1.synth import write_splits

    corpus, _ = write_splits(data_dir("test"), n_train=4, n_eval=1, seed=0)
    cfg = config_from_profile(ExtractConfig, "extract", "test", run=str(run.folder), corpus=str(corpus),
                              out=str(tmp_path / "store"), random_seed=5, max_docs=2)
    store = Store.open(extract_random_control(cfg), run.identity())  # the run's identity: same --run downstream
    assert store.manifest["kind"] == "random" and store.identity["control"]["seed"] == 5
    assert store.identity["control"]["trained_weights_sha256"] == run.identity()["weights_sha256"]
    assert [s["name"] for s in store.sites[:7]] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]
    acts = torch.cat([s.acts_TS for s in store.shards()]).float()
    # independent: the base model's input to layer 1's gate_proj dotted with the control's A there
    A = adapter_vectors(tmp_path / "store" / CONTROL_DIR)[(1, "gate_proj")][0]
    doc = tokenize_record(tiny_tokenizer(), json.loads(corpus.read_text().splitlines()[0]), 20000)["input_ids"]
    base, seen = load_model("random-qwen2").eval(), {}
    h = base.model.layers[1].mlp.gate_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0][0]))
    with torch.no_grad():
        base(torch.tensor([doc]))
    h.remove()
    torch.testing.assert_close(acts[:len(doc), 7 + 4], seen["x"] @ A, atol=2e-3, rtol=2e-3)
    topk = config_from_profile(TopKConfig, "topk", "test", run=str(run.folder), store=str(tmp_path / "store"),
                               out=str(tmp_path / "topk"))
    with pytest.raises(StoreError, match="is a 'random' store"):
        precompute_topk(topk, "lora")  # the LoRA steps refuse the control's store
    assert json.loads((precompute_topk(topk, "random") / "config.json").read_text())["kind"] == "random"
