import json
from dataclasses import dataclass

import pytest

from rank1.artifacts import atomic_path, read_json, write_json, write_run_metadata


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text('{"v": 2')  # half written
            raise RuntimeError("killed")
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_folder_replaced_atomically(tmp_path):
    target = tmp_path / "adapter"
    for v in (1, 2):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w").write_text(str(v))
    assert (target / "w").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_empty_write_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic_path(tmp_path / "x.json"):
            pass
    assert not (tmp_path / "x.json").exists()


def test_metadata_drops_secrets(tmp_path):
    @dataclass
    class Cfg:
        lr: float = 1.0
        hf_token: str = "hf_secret"
        api_key: str = "sk"
        openaikey: str = "sk"
        max_tokens: int = 5  # a count, not a secret

    write_run_metadata(tmp_path, Cfg(), {"layers": [1, 2]})
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg == {"lr": 1.0, "max_tokens": 5, "layers": [1, 2]}
    assert "argv" in read_json(tmp_path / "argv.json")
