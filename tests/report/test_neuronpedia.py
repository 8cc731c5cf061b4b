"""Neuronpedia export: layout, exact numbers after a gzip round trip, the validator, and refused inputs."""

import gzip
import json

import pytest

from rank1.report.neuronpedia import SCHEMA, validate_export, write_export

RELEASE = {"id": "rank1-lora", "title": "Rank-1 LoRA adapters", "description": "Adapters of SmolLM2 read as features",
           "creator": "rank1 team", "url": "https://example.org/rank1"}


def _feature(layer, index, tokens, values, explanation="fires on numbers", **extra):
    return {"layer": layer, "index": index, "density": 0.0125 * (index + 1), "max_act": 2.5 + index,
            "hist": {"edges": [0.0, 1.0, 2.0, 4.0], "counts": [5, 3, 1]},
            "logits": {"pos": [[" times", 1.75], [" ×", 0.5]], "neg": [[" the", -0.25]]},
            "examples": [{"tokens": tokens, "values": values}], "explanation": explanation,
            "explainer": "gpt-4o-mini", "label": f"L{layer}_o_proj_{'positive' if index % 2 == 0 else 'negative'}",
            **extra}


def _features():
    return [
        _feature(3, 0, [" 3", " ×", " 4"], [0.5, 2.25, 1.0], explanation="multiplication sign"),
        _feature(3, 1, ["<script>", "alert", "("], [1.5, -0.25, 1.5]),
        _feature(3, 2, ["a", "b"], [0.0, 0.75], explanation=None),
        _feature(7, 0, ["x"], [3.0]),
        _feature(7, 1, ["y", "z"], [0.125, 0.0]),
        _feature(7, 2, ["w", "v", "u", "t"], [0.0, 0.0, 4.5, 4.5]),
    ]


def _read(path):
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()]


def _export(tmp_path):
    return write_export(tmp_path / "np", model_id="smollm2-135m", source_set="rank1-lora", release=RELEASE,
                        features=_features(), batch_size=2)


def test_round_trip_layout_numbers_and_validation(tmp_path):
    (tmp_path / "np.tmp").mkdir()  # a stale temporary folder from a killed run
    (tmp_path / "np.tmp" / "junk").write_text("x")
    out = _export(tmp_path)
    assert out == tmp_path / "np" and not (tmp_path / "np.tmp").exists()
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    meta = ["model.jsonl", "release.jsonl", "source.jsonl", "sourceset.jsonl"]
    expected = []
    for source, n_expl in (("3-rank1-lora", 1), ("7-rank1-lora", 2)):  # layer 3's batch 1 has no explanation
        expected += [f"smollm2-135m/{source}/{m}" for m in meta]
        expected += [f"smollm2-135m/{source}/{kind}/batch-{n}.jsonl.gz" for kind in ("features", "activations")
                     for n in (0, 1)]
        expected += [f"smollm2-135m/{source}/explanations/batch-{n}.jsonl.gz" for n in range(n_expl)]
    assert files == sorted(expected)

    src = out / "smollm2-135m" / "3-rank1-lora"
    feats = _read(src / "features" / "batch-0.jsonl.gz")
    assert [f["index"] for f in feats] == ["0", "1"] and len(_read(src / "features" / "batch-1.jsonl.gz")) == 1
    f0 = feats[0]
    assert set(f0) == set(SCHEMA["features"])
    assert (f0["modelId"], f0["layer"], f0["frac_nonzero"], f0["maxActApprox"]) == ("smollm2-135m", "3-rank1-lora",
                                                                                   0.0125, 2.5)
    assert f0["vectorLabel"] == "L3_o_proj_positive" and f0["hasVector"] is False
    assert f0["pos_str"] == [" times", " ×"] and f0["pos_values"] == [1.75, 0.5]
    assert f0["neg_str"] == [" the"] and f0["neg_values"] == [-0.25]
    assert f0["freq_hist_data_bar_heights"] == [5, 3, 1] and f0["freq_hist_data_bar_values"] == [0.5, 1.5, 3.0]
    assert feats[1]["frac_nonzero"] == 0.025 and feats[1]["maxActApprox"] == 3.5

    raw = gzip.decompress((src / "activations" / "batch-0.jsonl.gz").read_bytes())
    assert " ×".encode() in raw and b"<script>" in raw  # UTF-8 as is, no escaping (as orjson writes)
    a0, a1 = _read(src / "activations" / "batch-0.jsonl.gz")
    assert a0["tokens"] == [" 3", " ×", " 4"] and a0["values"] == [0.5, 2.25, 1.0]
    assert (a0["maxValue"], a0["maxValueTokenIndex"], a0["minValue"]) == (2.25, 1, 0.5)
    assert (a0["modelId"], a0["layer"], a0["index"]) == ("smollm2-135m", "3-rank1-lora", "0")
    assert a1["tokens"][0] == "<script>"
    assert (a1["maxValue"], a1["maxValueTokenIndex"], a1["minValue"]) == (1.5, 0, -0.25)  # first of two maxima
    assert a0["id"] != a1["id"] and len(a0["id"]) == 25
    (a2,) = _read(src / "activations" / "batch-1.jsonl.gz")
    assert (a2["index"], a2["maxValueTokenIndex"], a2["values"]) == ("2", 1, [0.0, 0.75])
    (a5,) = _read(out / "smollm2-135m" / "7-rank1-lora" / "activations" / "batch-1.jsonl.gz")
    assert (a5["maxValue"], a5["maxValueTokenIndex"], a5["minValue"]) == (4.5, 2, 0.0)

    expl = _read(src / "explanations" / "batch-0.jsonl.gz")
    assert [(e["index"], e["description"]) for e in expl] == [("0", "multiplication sign"), ("1", "fires on numbers")]
    assert expl[0]["explanationModelName"] == "gpt-4o-mini" and expl[0]["layer"] == "3-rank1-lora"

    (release,) = [json.loads(x) for x in (src / "release.jsonl").read_text().splitlines()]
    assert (release["name"], release["descriptionShort"], release["urls"]) == (
        "rank1-lora", "Rank-1 LoRA adapters", ["https://example.org/rank1"])
    (source,) = [json.loads(x) for x in (src / "source.jsonl").read_text().splitlines()]
    assert (source["id"], source["modelId"], source["setName"]) == ("3-rank1-lora", "smollm2-135m", "rank1-lora")
    (sourceset,) = [json.loads(x) for x in (src / "sourceset.jsonl").read_text().splitlines()]
    assert (sourceset["name"], sourceset["releaseName"]) == ("rank1-lora", "rank1-lora")
    assert validate_export(out) == []

    # writing again replaces the export as a whole
    write_export(out, model_id="smollm2-135m", source_set="rank1-lora", release=RELEASE, features=_features()[:1])
    assert not (out / "smollm2-135m" / "7-rank1-lora").exists() and validate_export(out) == []


def _rewrite(path, edit):
    records = _read(path)
    edit(records)
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))


def test_validate_names_file_and_field(tmp_path):
    out = _export(tmp_path)
    src = out / "smollm2-135m" / "7-rank1-lora"

    def break_features(records):
        del records[0]["maxActApprox"]
        records[1]["frac_nonzero"] = "0.025"

    def break_activations(records):
        records[0]["values"] = [0.0, 0.0, "4.5", 4.5]
        records[0]["index"] = "99"

    _rewrite(src / "features" / "batch-0.jsonl.gz", break_features)
    _rewrite(src / "activations" / "batch-1.jsonl.gz", break_activations)
    problems = validate_export(out)
    assert len(problems) == 4, problems
    feat, act = "smollm2-135m/7-rank1-lora/features/batch-0.jsonl.gz", "7-rank1-lora/activations/batch-1.jsonl.gz"
    assert any(p.startswith(f"{feat}:1:") and "missing field 'maxActApprox'" in p for p in problems)
    assert any(p.startswith(f"{feat}:2:") and "'frac_nonzero' should be float, got str" in p for p in problems)
    assert any(act in p and "'values' should be list[float]" in p for p in problems)
    assert any(act in p and "'99'" in p and "not in features/" in p for p in problems)


def _refused(tmp_path, match, **kwargs):
    args = {"model_id": "smollm2-135m", "source_set": "rank1-lora", "release": RELEASE, "features": _features()}
    with pytest.raises(ValueError, match=match):
        write_export(tmp_path / "np", **{**args, **kwargs})
    assert not (tmp_path / "np").exists() and not (tmp_path / "np.tmp").exists()


def test_bad_inputs_raise_and_leave_nothing(tmp_path):
    _refused(tmp_path, r"duplicate feature \(layer=7, index=1\)", features=_features() + [_feature(7, 1, ["q"], [1.0])])
    bad = _features()
    bad[4]["examples"][0]["values"] = [0.5]
    _refused(tmp_path, r"feature \(layer=7, index=1\) example 0: 2 tokens but 1 values", features=bad)
    _refused(tmp_path, r"model_id 'HuggingFaceTB/SmolLM2-135M' is invalid: use only lowercase letters, digits",
             model_id="HuggingFaceTB/SmolLM2-135M")
    _refused(tmp_path, r"source_set 'rank1 lora' is invalid", source_set="rank1 lora")
    _refused(tmp_path, "features is empty", features=[])
