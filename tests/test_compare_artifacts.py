"""The artifact comparison used to check that a change leaves results unchanged (tests/compare_artifacts.py)."""

import json

import torch
from compare_artifacts import differences
from safetensors.torch import save_file


def make_root(root, value, digest, seconds, tensor):
    (root / "results").mkdir(parents=True)
    (root / "results" / "a.json").write_text(json.dumps({"value": value, "identity": {"weights_sha256": digest},
                                                         "wall_seconds": seconds, "out": str(root / "x")}))
    (root / "results" / "b.jsonl").write_text(json.dumps({"sha": digest, "n": 1}) + "\n")
    save_file({"t": tensor}, str(root / "results" / "t.safetensors"))


def test_equal_up_to_paths_times_and_consistent_digests(tmp_path):
    t = torch.tensor([1.0, float("nan")])
    make_root(tmp_path / "a", 1.5, "a" * 64, 3.0, t)
    make_root(tmp_path / "b", 1.5, "b" * 64, 9.0, t.clone())
    assert differences(tmp_path / "a", tmp_path / "b") == []


def test_a_changed_number_tensor_or_inconsistent_digest_is_reported(tmp_path):
    t = torch.tensor([1.0, 2.0])
    make_root(tmp_path / "a", 1.5, "a" * 64, 3.0, t)
    make_root(tmp_path / "b", 1.25, "b" * 64, 3.0, torch.tensor([1.0, 2.0 + 2**-20]))
    assert differences(tmp_path / "a", tmp_path / "b") == ["results/a.json: JSON differs",
                                                            "results/t.safetensors: tensor t differs"]
    (tmp_path / "b" / "results" / "b.jsonl").write_text(json.dumps({"sha": "c" * 64, "n": 1}) + "\n")
    (tmp_path / "b" / "results" / "a.json").write_text((tmp_path / "a" / "results" / "a.json").read_text()
                                                       .replace(str(tmp_path / "a"), str(tmp_path / "b"))
                                                       .replace("a" * 64, "b" * 64))
    assert "results/b.jsonl: JSON differs" in differences(tmp_path / "a", tmp_path / "b")
