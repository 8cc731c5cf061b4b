"""Helpers for tests: run repository scripts (in subprocesses or in-process), make test-profile runs and stores."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import torch
from peft import get_peft_model

from rank1 import constants as K
from rank1.config import REPO_ROOT, run_dir
from rank1.lora import adapter_sites, lora_config
from rank1.models import load_model


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
