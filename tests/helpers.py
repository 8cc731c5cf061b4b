"""Helpers for tests: run repository scripts (in subprocesses or in-process), make test-profile runs and stores."""

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model

from rank1 import constants as K
from rank1.config import REPO_ROOT, config_from_profile, data_dir, run_dir
from rank1.lora import adapter_sites, lora_config
from rank1.models import load_model
from rank1.synth import write_splits
from rank1.topk import SUFFIX
from rank1.training import TrainConfig, train


def run_script(args, env=None, check=True, **kw):
    """Run a repository script in a subprocess with the test's environment."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_run(name="t", layers=(0, 1), projections=K.PROJECTIONS, rank=1):
    """A finished test-profile run folder whose adapters all contribute (random B)."""
    model = get_peft_model(load_model("random-qwen2"), lora_config(list(layers), rank, projections=projections))
    for s in adapter_sites(model):
        torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.3)
    folder = run_dir(name)
    model.save_pretrained(folder / K.ADAPTER_DIR)
    (folder / K.CONFIG_JSON).write_text(json.dumps({"profile": "test", "model_id": "random-qwen2"}))
    return folder


def load_script(path):
    """Import a numbered script (its file name is not a module name) to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{abs(hash(str(path)))}", REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_store(folder, T=300, sites=None, shards=3, seed=0):
    """A store written from random numbers: T tokens, S sites, documents of 25 tokens (no model)."""
    sites = sites or [{"layer": 0, "name": n} for n in ("q_proj", "k_proj", "v_proj")]
    S = len(sites)
    rng = np.random.default_rng(seed)
    acts = torch.from_numpy(rng.normal(size=(T, S)).astype(np.float32)).half().float()
    acts[10:20, 0] = 9.0  # ties across a shard boundary at the top
    acts[:, 2] = acts[:, 2].abs()  # never negative: the negative feature has no examples
    docs = torch.from_numpy(np.repeat(np.arange(T // 25), 25).astype(np.int32))
    pos = torch.from_numpy(np.tile(np.arange(25), T // 25).astype(np.int32))
    ids = torch.from_numpy(rng.integers(0, 50, T).astype(np.int32))
    cut = np.linspace(0, T, shards + 1).astype(int)
    cut = [c - c % 25 for c in cut]
    parts = [{"acts_TS": acts[a:b], "token_ids_T": ids[a:b], "doc_ids_T": docs[a:b], "positions_T": pos[a:b]}
             for a, b in zip(cut[:-1], cut[1:], strict=True)]
    ident = {"run": "r", "base_model": "m", "weights_sha256": "x"}
    from rank1.store import write_store

    return write_store(folder, parts, sites, ident), acts, ids, docs


def hand_topk(features, context=8):
    """A TopKResult written by hand, for explainer and scorer tests. ``features``: dicts with ``top``,
    ``decile`` and ``random`` lists of examples ``(tokens, acts, center[, doc])`` (tokens as strings, acts the
    feature's values), and optionally ``name``, ``layer``, ``site_name``, ``polarity``, ``threshold``."""
    from rank1.topk import TopKResult

    W = 2 * context + 1
    vocab: dict[str, int] = {}
    F = len(features)
    K = max(1, max(len(f.get("top", [])) for f in features))
    ND = max(1, max((len(f.get("decile", [])) + 9) // 10 for f in features))
    NR = max(1, max(len(f.get("random", [])) for f in features))
    t = {"top_tokens_FKW": torch.full((F, K, W), -1, dtype=torch.int32), "top_acts_FKW": torch.zeros(F, K, W),
         "top_index_FK": torch.full((F, K), -1, dtype=torch.int64),
         "top_doc_FK": torch.full((F, K), -1, dtype=torch.int32),
         "decile_tokens_FDNW": torch.full((F, 10, ND, W), -1, dtype=torch.int32),
         "decile_acts_FDNW": torch.zeros(F, 10, ND, W),
         "decile_index_FDN": torch.full((F, 10, ND), -1, dtype=torch.int64),
         "decile_doc_FDN": torch.full((F, 10, ND), -1, dtype=torch.int32),
         "random_tokens_FNW": torch.full((F, NR, W), -1, dtype=torch.int32), "random_acts_FNW": torch.zeros(F, NR, W),
         "random_index_FN": torch.full((F, NR), -1, dtype=torch.int64),
         "random_doc_FN": torch.full((F, NR), -1, dtype=torch.int32),
         "threshold_F": torch.zeros(F)}
    counter = iter(range(10**9))

    def put(kind, idx, example):
        tokens, acts, center, *doc = example
        assert center <= context and len(tokens) - center - 1 <= context and len(tokens) == len(acts)
        start = context - center
        ids = [vocab.setdefault(s, len(vocab)) for s in tokens]
        suffix = SUFFIX[kind]
        t[f"{kind}_tokens_{suffix}W"][idx][start:start + len(ids)] = torch.tensor(ids, dtype=torch.int32)
        t[f"{kind}_acts_{suffix}W"][idx][start:start + len(ids)] = torch.tensor(acts, dtype=torch.float32)
        t[f"{kind}_index_{suffix}"][idx] = next(counter)
        t[f"{kind}_doc_{suffix}"][idx] = doc[0] if doc else next(counter)

    records = []
    for f, spec in enumerate(features):
        for k, ex in enumerate(spec.get("top", [])):
            put("top", (f, k), ex)
        for i, ex in enumerate(spec.get("decile", [])):
            put("decile", (f, 9 - i % 10, i // 10), ex)
        for j, ex in enumerate(spec.get("random", [])):
            put("random", (f, j), ex)
        thr = spec.get("threshold", 0.5)
        t["threshold_F"][f] = thr
        records.append({"feature": f, "name": spec.get("name", f"L0_q_proj_{f}"), "layer": spec.get("layer", 0),
                        "site_name": spec.get("site_name", "q_proj"), "polarity": spec.get("polarity", 1),
                        "n_top": len(spec.get("top", [])), "threshold": thr})
    return TopKResult(t, records, {"n_random": NR}, {i: s for s, i in vocab.items()})


CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def dashboard_page(index_html, problems: list):
    """A page of headless Chromium (the system browser, driven by Playwright) on a dashboard opened from disk;
    console errors and page errors are appended to ``problems``. Skips the test, saying why, where there is no
    Playwright or no Chromium (setup.sh installs it with apt-get where it can; or set RANK1_CHROMIUM)."""
    import pytest

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements.txt)")
    path = os.environ.get("RANK1_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        reason = "no Chromium found (setup.sh installs it with apt-get where it can; or set RANK1_CHROMIUM)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(Path(index_html).as_uri())
            yield page
        finally:
            browser.close()


def keep_screenshot(page, path) -> Path:
    """Save a screenshot of ``page`` (copied to $RANK1_SCREENSHOT when set, to look at it)."""
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("RANK1_SCREENSHOT"):
        shutil.copyfile(path, os.environ["RANK1_SCREENSHOT"])
    return Path(path)


@contextlib.contextmanager
def outputs_under(root):
    """``RANK1_ROOT`` set to ``root`` for a module-scoped fixture (pytest's monkeypatch is per test), restored
    (or unset again) afterwards."""
    old = os.environ.get("RANK1_ROOT")
    os.environ["RANK1_ROOT"] = str(root)
    try:
        yield Path(root)
    finally:
        if old is None:
            os.environ.pop("RANK1_ROOT", None)
        else:
            os.environ["RANK1_ROOT"] = old


def train_test_run(n_train: int) -> Path:
    """Under the current ``RANK1_ROOT``: ``n_train`` generated training documents and a 2-step test-profile
    LoRA run named ``a``; returns the run folder."""
    write_splits(data_dir("test"), n_train=n_train, n_eval=2, seed=0)
    return train(config_from_profile(TrainConfig, "train", "test", max_steps=2, run_name="a", lr=0.5))


def queued_http_server(default: tuple[int, dict, bytes] = (500, {}, b"{}")) -> tuple[dict, ThreadingHTTPServer]:
    """A local HTTP server (started on a thread) that answers each POST with the next ``(status, headers, body)``
    of ``state["queue"]``, else ``default``, and records each request's JSON body and Authorization header.
    Returns ``(state, server)``; ``state["url"]`` is its OpenAI-style base URL; the caller shuts it down."""
    state: dict = {"queue": [], "auth": [], "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["bodies"].append(json.loads(raw) if raw else None)
            state["auth"].append(self.headers.get("Authorization"))
            status, headers, body = state["queue"].pop(0) if state["queue"] else default
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    return state, httpd
