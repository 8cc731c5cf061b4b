"""Same seed, same bytes: stages 1.0, 2.0 and 3.0, each run twice in its own processes as ``run_all.sh`` runs
them (and under two Python hash seeds, so nothing may depend on set or dict-hash order), write byte-identical
artifacts. Only the ``timings.json`` beside them (wall times) may differ. Also the two helpers that make it so:
safetensors with sorted metadata, wall times kept in a file of their own."""

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from helpers import run_script, train_test_run
from rank1.artifacts import TIMINGS_JSON, record_timings, write_safetensors

STAGES = ("1_lora_adapter_ablations/1.0_generate_ablation_data.py",
          "2_lora_activation_interp/2.0_extract_lora_activations.py",
          "3_lora_sae/3.0_train_sae.py")
STAGE_FOLDERS = ("ablations", "lora_activations", "sae")  # results/test/<folder>/<run>/


def run_stages(hash_seed: str) -> None:
    for script in STAGES:
        run_script([script, "--profile", "test"], env={"PYTHONHASHSEED": hash_seed})


def file_bytes(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_safetensors_metadata_is_written_in_one_order(tmp_path):
    """safetensors alone writes its metadata in hash order, which varies from one file to the next even within a
    process (12 keys: two orders agree by chance once in 12! times)."""
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3, dtype=torch.float16), "c": torch.zeros(1)}
    meta = {k: str(i) * (i + 1) for i, k in enumerate("qwertyuiopé\u2028")}
    assert len({save(tensors, metadata=meta) for _ in range(3)}) > 1  # what the helper corrects
    for name in ("one", "two", "three"):
        write_safetensors(tmp_path / f"{name}.safetensors", tensors, dict(reversed(meta.items())))
    one = (tmp_path / "one.safetensors").read_bytes()
    assert one == (tmp_path / "two.safetensors").read_bytes() == (tmp_path / "three.safetensors").read_bytes()
    written = json.loads(one[8:8 + int.from_bytes(one[:8], "little")])["__metadata__"]
    assert list(written) == sorted(meta) and written == meta
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as f:
        assert f.metadata() == meta
    assert load_file(tmp_path / "one.safetensors")["b"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_timings_hold_one_entry_per_artifact(tmp_path):
    record_timings(tmp_path, "b.json", seconds=2.00049)
    record_timings(tmp_path, "a.json", seconds=1, load_seconds=0.5)
    record_timings(tmp_path, "b.json", seconds=3)  # a rerun replaces its own entry
    assert (tmp_path / TIMINGS_JSON).read_text() == json.dumps(
        {"a.json": {"load_seconds": 0.5, "seconds": 1.0}, "b.json": {"seconds": 3.0}}, indent=2) + "\n"
    (tmp_path / TIMINGS_JSON).write_text('{"a.json": {"sec')  # cut short: replaced, never an error
    record_timings(tmp_path, "c.json", seconds=0.0004)
    assert json.loads((tmp_path / TIMINGS_JSON).read_text()) == {"c.json": {"seconds": 0.0}}


def test_stages_write_the_same_bytes_twice(isolated_root):
    train_test_run(n_train=8)
    run_stages("1")
    first = isolated_root / "first"
    os.replace(isolated_root / "results", first)  # the second run starts from nothing, on the same paths
    run_stages("2")
    a, b = file_bytes(first), file_bytes(isolated_root / "results")
    assert sorted(a) == sorted(b)
    assert {p.parts[1] for p in a if p.name == TIMINGS_JSON} == {"ablations", "lora_activations"}
    assert {p.parts[1] for p in a if p.suffix == ".safetensors"} == set(STAGE_FOLDERS)
    differ = [str(p) for p in a if a[p] != b[p] and p.name != TIMINGS_JSON]
    assert not differ, f"differ between two runs of the same seed: {differ}"
