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


def test_settings_digest_is_canonical_json_and_file_sha256_reads_files_in_order(tmp_path):
    import hashlib

    from rank1.artifacts import file_sha256, settings_digest

    assert settings_digest({"b": 1, "a": [1, 2]}) == settings_digest({"a": [1, 2], "b": 1})
    assert settings_digest({"a": 1}) == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert settings_digest({"p": tmp_path}) == hashlib.sha256(f'{{"p": "{tmp_path}"}}'.encode()).hexdigest()
    (tmp_path / "x").write_bytes(b"ab")
    (tmp_path / "y").write_bytes(b"c")
    assert file_sha256(tmp_path / "x", tmp_path / "y") == hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(tmp_path / "y", tmp_path / "x") == hashlib.sha256(b"cab").hexdigest()


def test_reuse_finished_reuses_same_settings_refuses_others_and_recomputes_on_overwrite(tmp_path):
    from rank1.artifacts import reuse_finished, write_json
    from rank1.errors import OtherSettings

    done = tmp_path / "result.json"
    expected = {"identity.weights_sha256": "abc", "config.k": (1, 2)}
    assert reuse_finished(done, expected, overwrite=False) is None  # nothing there: compute
    write_json(done, {"identity": {"weights_sha256": "abc"}, "config": {"k": [1, 2]}, "value": 7})
    assert reuse_finished(done, expected, overwrite=False)["value"] == 7  # tuples equal the saved lists
    assert reuse_finished(done, expected, overwrite=True) is None
    with pytest.raises(OtherSettings, match=r"result.json was made with other settings or inputs "
                                            r"\(config.k: \[1, 2\] there, \[1, 3\] now\); pass --overwrite"):
        reuse_finished(done, {**expected, "config.k": [1, 3]}, overwrite=False)
    with pytest.raises(OtherSettings, match=r"identity.weights_sha256: \"abc\" there, \"def\" now"):
        reuse_finished(done, {"identity.weights_sha256": "def"}, overwrite=False)
    # a changed dict is named by the entries that changed; an entry one side lacks differs even from null
    with pytest.raises(OtherSettings, match=r"\(identity.extra: \(absent\) there, null now; identity.weights_sha256: "
                                            r"\"abc\" there, \"def\" now\); pass"):
        reuse_finished(done, {"identity": {"weights_sha256": "def", "extra": None}}, overwrite=False)
    assert reuse_finished(done, {"identity": {"weights_sha256": "abc"}}, overwrite=False)["value"] == 7


def test_resume_partial_keeps_same_stamp_refuses_or_restarts_other_and_clears_unstamped(tmp_path):
    from rank1.artifacts import read_json, resume_partial
    from rank1.constants import RESUME_STAMP
    from rank1.errors import OtherSettings

    folder = tmp_path / "partial"
    assert resume_partial(folder, {"seed": 1}, overwrite=False) is False  # new
    (folder / "piece").write_text("done")
    assert resume_partial(folder, {"seed": 1}, overwrite=False) is True and (folder / "piece").is_file()
    with pytest.raises(OtherSettings, match="holds partial work of other settings or inputs; pass --overwrite"):
        resume_partial(folder, {"seed": 2}, overwrite=False)
    assert (folder / "piece").is_file()  # a refusal deletes nothing
    assert resume_partial(folder, {"seed": 2}, overwrite=False, restart_other=True) is False
    assert not (folder / "piece").exists() and read_json(folder / RESUME_STAMP) == {"seed": 2}
    (folder / "piece").write_text("done")
    assert resume_partial(folder, {"seed": 2}, overwrite=True) is False and not (folder / "piece").exists()
    (folder / RESUME_STAMP).unlink()
    (folder / "piece").write_text("left by something else")
    assert resume_partial(folder, {"seed": 2}, overwrite=False) is False and not (folder / "piece").exists()
