"""Activation store and top-k: independent recomputation, resume, data parallelism, exact top-k, bad input."""

import json
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time

import pytest
import torch
from peft import PeftModel

from helpers import outputs_under, run_script, synthetic_store, train_test_run
from rank1 import constants as K
from rank1.activations.config import ExtractConfig, TopKConfig
from rank1.activations.stage import extract, precompute_topk
from rank1.capture import sample_neurons
from rank1.config import config_from_profile
from rank1.data import tokenize_record
from rank1.models import load_model, tiny_tokenizer
from rank1.runs import RunError
from rank1.store import SHARD_KEYS, Job, Store, StoreError, plan_shards, run_job, shard_name, worker_gpus
from rank1.topk import TopKResult, column_topk_keys, compute_topk, decode_keys, heapq_topk, ordered_keys

SCRIPTS = "2_lora_activation_interp"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step test-profile run and a 12-document corpus, shared by the tests of this module."""
    with outputs_under(tmp_path_factory.mktemp("root")) as root:
        run = train_test_run(n_train=12)
    return {"run": str(run), "corpus": str(root / "data" / "test" / K.TRAIN_JSONL)}


def _extract(trained, tmp_path, kind="lora", **kw):
    kw.setdefault("corpus", trained["corpus"])
    cfg = config_from_profile(ExtractConfig, "extract", "test", run=trained["run"], out=str(tmp_path / kind), **kw)
    return Store.open(extract(cfg, kind))


def _concat(store):
    shards = list(store.shards())
    return {k: torch.cat([getattr(s, k) for s in shards]) for k in ("acts_TS", "token_ids_T", "doc_ids_T",
                                                                    "positions_T")}


def test_lora_store_equals_input_dot_A(trained, tmp_path):
    store = _extract(trained, tmp_path, max_docs=6)
    assert len(store.manifest["shards"]) > 1 and store.manifest["kind"] == "lora"
    data = _concat(store)
    tok = tiny_tokenizer()
    recs = [json.loads(line) for line in open(trained["corpus"])][:6]
    docs = [tokenize_record(tok, r, 20000)["input_ids"] for r in recs]
    assert data["token_ids_T"].tolist() == sum(docs, [])
    assert data["positions_T"].tolist() == sum([list(range(len(d))) for d in docs], [])
    assert data["doc_ids_T"].tolist() == sum([[i] * len(d) for i, d in enumerate(docs)], [])
    # independent: plain PEFT model, a pre-hook on each checked projection, input @ A (one document at a time)
    model = PeftModel.from_pretrained(load_model("random-qwen2"), f"{trained['run']}/adapter").eval()
    layers = model.base_model.model.model.layers
    checks = {1: layers[0].self_attn.k_proj, 3: layers[0].self_attn.o_proj, 13: layers[1].mlp.down_proj,
              11: layers[1].mlp.gate_proj}
    assert [store.sites[i]["name"] for i in checks] == ["k_proj", "o_proj", "down_proj", "gate_proj"]
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0].detach()))
             for i, m in checks.items()]
    start = 0
    try:
        for d in docs:
            with torch.no_grad():
                model(torch.tensor([d]))
            for i, m in checks.items():
                expected = seen[i] @ m.lora_A["default"].weight[0]
                got = data["acts_TS"][start:start + len(d), i].float()
                torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
            start += len(d)
    finally:
        for h in hooks:
            h.remove()
    assert data["acts_TS"].dtype == torch.float16 and data["acts_TS"].abs().max() > 0


def test_mlp_store_is_the_base_swiglu_product(trained, tmp_path):
    store = _extract(trained, tmp_path, kind="mlp", max_docs=2)
    neurons = sample_neurons(2, 128, 7, 0)
    assert [s["neuron"] for s in store.sites] == neurons[0] + neurons[1] and len(set(neurons[0])) == 7
    assert sample_neurons(2, 128, 7, 0) == neurons and sample_neurons(2, 128, 7, 1) != neurons
    assert sample_neurons(3, 128, 7, 0)[:2] == neurons  # adding layers leaves the others alone
    with pytest.raises(ValueError, match="neurons per layer must be in 1..128"):
        sample_neurons(2, 128, 129, 0)
    base = load_model("random-qwen2").eval()  # no adapter at all
    data = _concat(store)
    n0 = int((data["doc_ids_T"] == 0).sum())
    layer = base.model.layers[1]
    got = {}
    h = layer.post_attention_layernorm.register_forward_hook(lambda m, a, out: got.__setitem__("h", out[0]))
    with torch.no_grad():
        base(data["token_ids_T"][:n0].long()[None])
        h.remove()
        x = torch.nn.functional.silu(layer.mlp.gate_proj(got["h"])) * layer.mlp.up_proj(got["h"])
    torch.testing.assert_close(data["acts_TS"][:n0, 7:].float(), x[:, neurons[1]], atol=2e-3, rtol=2e-3)


def test_resume_keeps_finished_shards_and_redoes_the_rest(trained, tmp_path):
    store = _extract(trained, tmp_path, max_docs=6, shard_tokens=300)
    shards = [store.folder / s["file"] for s in store.manifest["shards"]]
    before = [store.shard(i).acts_TS.clone() for i in range(len(shards))]  # shards are memory-mapped
    cut = shards[2].read_bytes()[:-40]
    mtime0 = shards[0].stat().st_mtime_ns
    (store.folder / K.STORE_MANIFEST).unlink()  # as after a kill: no manifest, one shard gone, one cut short
    shards[1].unlink()
    shards[2].write_bytes(cut)
    with pytest.raises(StoreError, match="manifest.json is missing.*did not finish: rerun it to resume"):
        Store.open(store.folder)
    again = _extract(trained, tmp_path, max_docs=6, shard_tokens=300)
    for i in range(len(shards)):  # equal up to float rounding (CPU kernels may reduce in another order)
        torch.testing.assert_close(again.shard(i).acts_TS, before[i], atol=2e-3, rtol=2e-3)
    assert shards[0].stat().st_mtime_ns == mtime0  # not redone
    assert again.manifest["store_key"] == store.manifest["store_key"]


@pytest.mark.slow
def test_two_processes_write_the_same_store(trained, tmp_path):
    one = _extract(trained, tmp_path / "one", max_docs=6)
    two = _extract(trained, tmp_path / "two", max_docs=6, num_procs=2)
    for a, b in zip(one.shards(), two.shards(), strict=True):
        assert torch.equal(a.token_ids_T, b.token_ids_T) and torch.equal(a.doc_ids_T, b.doc_ids_T)
        torch.testing.assert_close(a.acts_TS, b.acts_TS, atol=2e-3, rtol=2e-3)  # 1 vs 2 threads per process


def test_gpu_workers_take_the_visible_devices_in_order():
    assert worker_gpus(4, "4,5,6,7", 4) == ["4", "5", "6", "7"]  # as SLURM sets it: worker 2 runs on GPU 6
    assert worker_gpus(4, None, 4)[2] == "2"
    assert worker_gpus(2, "GPU-8f2a, GPU-11c0", 2) == ["GPU-8f2a", "GPU-11c0"]
    assert worker_gpus(2, "4,5,6,7", 4) == ["4", "5"]
    with pytest.raises(StoreError, match=r"num_gpus=5 but this process sees 4 GPU\(s\) \(CUDA_VISIBLE_DEVICES="
                                         r"4,5,6,7\): pass --num_gpus 4 .*or run where 5 GPUs are visible"):
        worker_gpus(5, "4,5,6,7", 4)
    with pytest.raises(StoreError, match=r"num_gpus=5 but this process sees 4 GPU\(s\): pass --num_gpus 4"):
        worker_gpus(5, None, 4)
    with pytest.raises(StoreError, match=r"num_gpus=1 but this process sees 0 GPU"):
        worker_gpus(1, "0", 0)  # a device list inherited by a process without CUDA


def test_gpu_extraction_never_falls_back_to_the_cpu(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StoreError, match=r"num_gpus=2 but this process sees 1 GPU\(s\) \(CUDA_VISIBLE_DEVICES=4\)"):
        _extract(trained, tmp_path, max_docs=2, num_gpus=2)
    assert not list(tmp_path.glob("lora/shards/*"))
    with pytest.raises(StoreError, match=r"worker 0 \(GPU\) finds no CUDA device; it does not fall back"):
        _extract(trained, tmp_path, max_docs=2, num_gpus=1)
    job = Job(None, [], None, [], [0], tmp_path, "", "float16", 1, rank=1, on_gpu=True, gpu="5")
    with pytest.raises(StoreError, match=r"extraction worker 1 \(GPU 5\) finds no CUDA device"):
        run_job(job)  # as in a worker process: it takes its GPU first, then finds no CUDA
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def _wait_for(condition, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"waited {seconds} s for {condition}")


def test_dead_worker_fails_at_once_and_a_rerun_resumes(trained, tmp_path):
    """One of two CPU workers is killed as the OOM killer would (SIGKILL): the extraction fails within seconds,
    naming the worker and its exit code; the other worker's shards stay, and the rerun (its one shard left runs
    in-process, with a worker's threads) writes the bytes of an uninterrupted run."""
    kw = {"max_docs": 3, "shard_tokens": 1, "num_procs": 2}  # a shard per document: worker 0 writes 0 and 2
    fresh = _extract(trained, tmp_path / "fresh", **kw)
    assert len(fresh.manifest["shards"]) == 3
    shards = tmp_path / "cut" / "lora" / K.STORE_SHARDS_DIR
    failed = []

    def extract_in_background():
        try:
            _extract(trained, tmp_path / "cut", **kw)
        except Exception as e:
            failed.append(e)

    threads = torch.get_num_threads()
    thread = threading.Thread(target=extract_in_background, daemon=True)
    thread.start()
    worker1 = _wait_for(lambda: next((p for p in multiprocessing.active_children()
                                      if p.name == "extract-worker-1"), None))
    os.kill(worker1.pid, signal.SIGSTOP)  # held before it writes anything, while worker 0 finishes its shards
    _wait_for(lambda: (shards / shard_name(0)).is_file() and (shards / shard_name(2)).is_file())
    killed = time.time()
    os.kill(worker1.pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the extraction still waits for a dead worker"
    assert time.time() - killed < 10
    assert len(failed) == 1 and isinstance(failed[0], StoreError), failed
    assert re.search(r"extraction worker 1 \(CPU\) died with exit code -9 \(killed by SIGKILL: out of memory\?\); "
                     r"finished shards are kept: rerun to resume", str(failed[0])), failed[0]
    assert sorted(p.name for p in shards.iterdir()) == [shard_name(0), shard_name(2)]
    assert not (shards.parent / K.STORE_MANIFEST).exists()
    kept = {i: (shards / shard_name(i)).stat().st_mtime_ns for i in (0, 2)}
    again = _extract(trained, tmp_path / "cut", **kw)
    assert {i: (shards / shard_name(i)).stat().st_mtime_ns for i in kept} == kept  # not redone
    assert torch.get_num_threads() == threads  # the in-process shard gave its threads back
    assert again.manifest["shards"] == fresh.manifest["shards"]
    for i in range(3):
        for key in SHARD_KEYS:
            a, b = again.tensor(i, key), fresh.tensor(i, key)
            assert a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes(), (i, key)


def test_broken_stores_fail_clearly(trained, tmp_path):
    store = _extract(trained, tmp_path, max_docs=4)
    path = store.folder / store.manifest["shards"][0]["file"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(StoreError, match="truncated or changed.*rerun the extraction"):
        Store.open(store.folder)
    path.unlink()
    with pytest.raises(StoreError, match="shard_00000.safetensors is missing"):
        Store.open(store.folder)


def test_overflow_and_empty_corpus(trained, tmp_path):
    from rank1.store import to_storage
    with pytest.raises(StoreError, match="exceeds the float16 range.*--dtype bfloat16"):
        to_storage(torch.tensor([[1.0, 7e4]]), "float16", [{"layer": 0, "name": "q_proj"}, {"layer": 0, "name": "k"}])
    assert to_storage(torch.tensor([[7e4]]), "bfloat16", [{}]).dtype == torch.bfloat16
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no records"):
        _extract(trained, tmp_path, corpus=str(empty))
    assert not (tmp_path / "lora").exists()


def test_plan_keeps_documents_whole():
    assert plan_shards([3, 3, 3, 10, 1], 5) == [(0, 2), (2, 4), (4, 5)]
    assert plan_shards([7], 5) == [(0, 1)]


# ---------------------------------------------------------------- top-k


def test_keys_order_by_value_then_index():
    v = torch.tensor([[1.0], [3.0], [3.0], [-2.0], [0.0], [2.5e-8]])
    keys = ordered_keys(v, torch.arange(100, 106)[:, None])
    idx, val = decode_keys(keys.topk(6, dim=0).values.T)
    assert torch.equal(column_topk_keys(v, 100, 6, block=2), keys.topk(6, dim=0).values.T)
    assert idx[0].tolist() == [101, 102, 100, 105, -1, -1]
    assert val[0, :4].tolist() == pytest.approx([3.0, 3.0, 1.0, 2.5e-8])


def test_block_candidates_keep_every_tie():
    g = torch.Generator().manual_seed(0)
    v_TF = torch.randint(-3, 4, (2000, 5), generator=g).float() / 2  # few distinct values: ties everywhere
    v_TF[1500:1510, 4] = 9.0
    keys = column_topk_keys(v_TF, 7, 20, block=8)
    idx, val = decode_keys(keys)
    for f, ref in enumerate(heapq_topk(v_TF.numpy(), 20)):
        assert [(v, i - 7) for v, i in zip(val[f].tolist(), idx[f].tolist(), strict=True)] == ref


def test_topk_equals_heapq_and_samples_are_valid(tmp_path):
    store, acts, ids, docs = synthetic_store(tmp_path, T=300)
    res = compute_topk(store, k=12, context=3, n_per_decile=2, n_random=4, active_frac=0.2, seed=0)
    values = torch.stack([acts, -acts], 2).reshape(300, -1).numpy()
    ref = heapq_topk(values, 12)
    for f in range(6):
        got = [(v, i) for v, i in zip(res.tensors["top_value_FK"][f].tolist(), res.tensors["top_index_FK"][f].tolist(),
                                      strict=True) if i >= 0]
        assert got == ref[f]
    assert res.tensors["top_index_FK"][0, :10].tolist() == list(range(10, 20))  # tie: lower index first
    assert res.features[5]["n_top"] == 0 and res.features[5]["name"] == "L0_v_proj_negative"
    # contexts: centred, inside the document, values of the feature
    f, r = 1, 0
    t = res.tensors["top_index_FK"][f, r].item()
    window = res.tensors["top_tokens_FKW"][f, r]
    assert window[3].item() == ids[t].item()
    for o in range(-3, 4):
        inside = 0 <= t + o < 300 and docs[t + o] == docs[t]
        assert window[3 + o].item() == (ids[t + o].item() if inside else -1)
        if inside:
            assert res.tensors["top_acts_FKW"][f, r, 3 + o].item() == pytest.approx(-acts[t + o, 0].item())
    # scoring samples: disjoint from the top-k, in their decile, random windows quiet
    thr = res.tensors["threshold_F"]
    for f in range(6):
        top = set(res.tensors["top_index_FK"][f].tolist()) - {-1}
        dec = res.tensors["decile_index_FDN"][f]
        edges = res.tensors["decile_edges_FD1"][f]
        for d in range(10):
            for i in dec[d].tolist():
                if i < 0:
                    continue
                assert i not in top
                v = values[i, f]
                assert v > thr[f] and (d == 0 or v >= edges[d] - 1e-6) and (d == 9 or v <= edges[d + 1] + 1e-6)
        for i in res.tensors["random_index_FN"][f].tolist():
            if i >= 0:
                window = [j for j in range(max(0, i - 3), min(300, i + 4)) if docs[j] == docs[i]]
                assert i not in top and all(values[j, f] <= thr[f] for j in window)
    assert (res.tensors["decile_index_FDN"][4] >= 0).sum() == 20  # |x| feature: every decile has 2 samples
    # statistics
    torch.testing.assert_close(res.tensors["min_S"], acts.min(0).values)
    torch.testing.assert_close(res.tensors["mean_S"], acts.mean(0), atol=1e-5, rtol=1e-5)
    exact = torch.quantile(acts[:, 0], torch.tensor([0.25, 0.5, 0.75]))
    width = (acts[:, 0].max() - acts[:, 0].min()) / 2000
    assert (res.tensors["quantiles_SQ"][0, 4:7] - exact).abs().max() <= 2 * width
    assert res.tensors["hist_counts_SB"].sum(1).tolist() == [300] * 3


def test_topk_round_trip_and_k_too_large(tmp_path):
    store, acts, ids, _ = synthetic_store(tmp_path / "s", T=100, shards=2)
    res = compute_topk(store, k=5, context=2, n_per_decile=1, n_random=1)
    res.vocab = {i: f"w{i}" for i in range(50)}
    res.vocab[1] = "<script>"
    res.save(tmp_path / "t")
    (tmp_path / "t" / K.CONFIG_JSON).write_text("{}")
    back = TopKResult.load(tmp_path / "t")
    assert back.vocab == res.vocab and back.features == res.features
    strings, values, center = back.window("top", 0, 0)
    t = int(back.tensors["top_index_FK"][0, 0])
    assert strings[center] == res.vocab[int(ids[t])] and values[center] == pytest.approx(float(acts[t, 0]))
    assert len(strings) == len(values) <= 5
    for name, t in res.tensors.items():
        torch.testing.assert_close(back.tensors[name], t, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(StoreError, match="k=101 is larger than the store's 100 tokens"):
        compute_topk(store, k=101)


def test_topk_refuses_a_store_of_another_run(trained, tmp_path):
    _extract(trained, tmp_path, max_docs=2)
    other = tmp_path / "other_run"
    shutil.copytree(trained["run"], other)
    w = other / "adapter" / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file
    t = load_file(str(w))
    save_file({k: v * 2 for k, v in t.items()}, str(w))
    (other / "adapter" / ".weights_sha256.json").unlink(missing_ok=True)
    cfg = config_from_profile(TopKConfig, "topk", "test", run=str(other), store=str(tmp_path / "lora"),
                              out=str(tmp_path / "tk"))
    with pytest.raises(StoreError, match="made from run 'a'.*not from 'other_run'"):
        precompute_topk(cfg, "lora")
    assert not (tmp_path / "tk").exists()


def test_scripts_bad_input_one_error_line(trained, tmp_path):
    bad = tmp_path / "r2"
    shutil.copytree(trained["run"], bad)
    cfg_path = bad / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["r"] = 2
    cfg_path.write_text(json.dumps(cfg))
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [(["--run", bad], "has rank 2, this stage needs rank 1"),
             (["--run", trained["run"], "--corpus", trained["corpus"], "--out", blocker / "x"], "not writable")]
    for args, message in cases:
        proc = run_script([f"{SCRIPTS}/2.0_extract_lora_activations.py", "--profile", "test", *args], check=False)
        assert proc.returncode == 2, proc.stderr
        lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], proc.stderr
    assert isinstance(RunError("x"), ValueError)


@pytest.mark.slow
def test_killed_extraction_resumes(trained, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from rank1.config import REPO_ROOT

    out = tmp_path / "killed"
    args = [sys.executable, f"{SCRIPTS}/2.0_extract_lora_activations.py", "--profile", "test", "--run", trained["run"],
            "--corpus", trained["corpus"], "--out", str(out), "--shard_tokens", "100", "--batch_tokens", "128"]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / K.STORE_SHARDS_DIR).glob("shard_*.safetensors"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = sorted((out / K.STORE_SHARDS_DIR).glob("shard_*.safetensors"))
    assert kept and not (out / K.STORE_MANIFEST).exists()
    run_script(args[1:])
    resumed = Store.open(out)
    fresh = _extract(trained, tmp_path / "fresh", shard_tokens=100, batch_tokens=128)
    assert len(resumed.manifest["shards"]) == len(fresh.manifest["shards"]) > len(kept)
    for a, b in zip(resumed.shards(), fresh.shards(), strict=True):
        assert torch.equal(a.token_ids_T, b.token_ids_T)
        torch.testing.assert_close(a.acts_TS, b.acts_TS, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("script", ["2.0_extract_lora_activations.py", "2.1_precompute_lora_topk.py",
                                    "2.3_lora_activation_dashboard.py", "2.4_extract_mlp_activations.py",
                                    "2.5_precompute_mlp_topk.py", "2.2_run_lora_autointerp.py",
                                    "2.3_analyze_lora_interpretability.py", "2.7_run_mlp_autointerp.py",
                                    "2.8_compare_lora_mlp.py"])
def test_help_lists_every_flag(script, capsys):
    import dataclasses
    import importlib.util
    import re

    from rank1.config import REPO_ROOT, parse_config

    path = REPO_ROOT / SCRIPTS / script
    section = re.search(r'parse_config\(\w+, "(\w+)"', path.read_text()).group(1)
    spec = importlib.util.spec_from_file_location("stage_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = next(v for k, v in vars(module).items() if k.endswith("Config") and dataclasses.is_dataclass(v))
    with pytest.raises(SystemExit):
        parse_config(cls, section, module.__doc__, ["--help"])
    out = capsys.readouterr().out
    assert "Usage:" in out and all(f"--{f.name}" in out for f in dataclasses.fields(cls) if f.name != "profile")


def test_topk_of_mapped_columns_positive_only_block_by_block(tmp_path):
    """Columns computed from the shard (here relu of a linear map, as an SAE encoder) give the top-k of those
    values; evaluating them in blocks changes nothing; only the positive polarity is kept."""
    from rank1.topk import Columns

    store, acts, ids, docs = synthetic_store(tmp_path, T=300)
    W = torch.tensor([[1.0, -1.0, 0.5, 0.0, 2.0], [0.0, 1.0, 0.5, -1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0]])
    latent = torch.relu(acts @ W)

    def cols(block):
        return Columns([f"c{i}" for i in range(5)], [{"latent": i} for i in range(5)],
                       lambda sh, c: torch.relu(sh.acts_TS.float() @ W[:, c]), block)

    whole = compute_topk(store, k=7, context=2, n_per_decile=1, n_random=2, active_frac=0.0, seed=0,
                         columns=cols(0), positive_only=True)
    blocked = compute_topk(store, k=7, context=2, n_per_decile=1, n_random=2, active_frac=0.0, seed=0,
                           columns=cols(2), positive_only=True)
    for name, t in whole.tensors.items():
        torch.testing.assert_close(blocked.tensors[name], t, rtol=0, atol=1e-6, equal_nan=True)
    assert whole.features == blocked.features
    assert [f["name"] for f in whole.features] == ["c0", "c1", "c2", "c3", "c4"]
    assert whole.features[2]["latent"] == 2 and whole.features[2]["polarity"] == 1
    ref = heapq_topk(latent.numpy(), 7)
    for f in range(5):
        got = [(v, i) for v, i in zip(whole.tensors["top_value_FK"][f].tolist(),
                                      whole.tensors["top_index_FK"][f].tolist(), strict=True) if i >= 0]
        assert [i for _, i in got] == [i for _, i in ref[f]]
        assert [v for v, _ in got] == pytest.approx([v for v, _ in ref[f]], rel=1e-5)
    # active = fires (active_frac 0): counts are exact firing counts; context values are the column's
    assert whole.tensors["active_count_F"].tolist() == (latent > 0).sum(0).tolist()
    f, r = 4, 0
    t = int(whole.tensors["top_index_FK"][f, r])
    window = whole.tensors["top_acts_FKW"][f, r]
    assert window[2].item() == pytest.approx(latent[t, f].item(), rel=1e-5)
    if t + 1 < 300 and docs[t + 1] == docs[t]:
        assert window[3].item() == pytest.approx(latent[t + 1, f].item(), rel=1e-5, abs=1e-6)
