"""Export features in Neuronpedia's export layout, so a Neuronpedia instance can import them.

Layout (``folder`` is what gets synced to the datasets bucket prefix, e.g. ``s3://neuronpedia-datasets/v1``)::

    folder/<model_id>/<layer>-<source_set>/      one folder per source (= per layer)
        release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl     one record each (copied into every source)
        features/batch-N.jsonl.gz      Neuron rows         (features K*batch_size .. (K+1)*batch_size-1, by index)
        activations/batch-N.jsonl.gz   Activation rows     (the top examples of the features of batch N)
        explanations/batch-N.jsonl.gz  Explanation rows    (written only when batch N has any explanation)

``batch_size`` counts features, as in both converters (batch N of all three kinds covers the same features), so an
activations batch holds up to batch_size x examples-per-feature rows; an empty batch file is never written (the
importer parses the first line of every file). Names are the converters' own mix: camelCase (``maxActApprox``,
``maxValueTokenIndex``) beside SAEDashboard's snake_case (``frac_nonzero``, ``pos_str``, ``freq_hist_data_bar_*``).

Source read (github hijohnnylin/neuronpedia, snapshot at ebb8426fc550ad5d1f76d52c271a624af3c08a57):
``utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py`` (last change ff1b2fd1)
and its sibling ``convert-llamascope-arrow-to-neuronpedia-export.py`` (1180d11e; it also writes explanations),
which serialise the dataclasses of ``neuronpedia_utils/db_models/*.py`` with ``orjson.dumps(x.__dict__)``;
the importer ``apps/webapp/app/api/admin/import/route.ts`` + ``lib/db/import.ts`` (reads ``{modelId}/{sourceId}/``,
inserts every batch with ``jsonb_to_recordset`` into the table's columns, ignoring unknown keys, ON CONFLICT DO
NOTHING); ``apps/webapp/prisma/schema.prisma`` (models Neuron, Activation, Explanation, Source, SourceSet,
SourceRelease, Model); ``export-data.py`` (the database dump, same layout). Field names and JSON types below are the
converters' (every dataclass field is written, defaults included); histogram bar values are bin midpoints, as in
SAEDashboard's ``HistogramData.from_data``; top examples get binMin=-1, binContains=-1, binMax=max activation, as
SAEDashboard writes for its "TOP ACTIVATIONS" group.

Choices and what could not be confirmed (no Neuronpedia instance was run):
- ``index`` is written as a string: Prisma's column is String, the dataclasses say ``str`` and the database dump
  writes strings; the converters pass SAEDashboard's int through, which Postgres casts to text on import.
- ``layer`` is the source id (``"3-rank1-lora"``), as in the converters, not the integer layer.
- our ``label`` goes to ``Neuron.vectorLabel`` (a nullable string; the UI shows it for steering vectors only).
- release: name=id, description=description, descriptionShort=title, urls=[url], creatorName(Short)=creator;
  the source set's description is the release title. ``creatorId``/``authorId`` is Neuronpedia's default user
  (``DEFAULT_CREATOR_USER_ID`` in apps/webapp/lib/env.ts); an instance without that user rejects the rows.
- explanations use typeName "unknown" and explanationModelName = the explainer (or "unknown"), as the llamascope
  converter does; both are foreign keys, so the instance's config tables must know these names.
- Explanation's ``triggeredById`` is written because the dataclass has it, though the table names it
  ``triggeredByUserId`` (the importer drops keys that are not columns).

Written by hand: no maintained library writes this format from arbitrary features (SAEDashboard's runner only
writes it from SAELens SAEs, and the converters above read that runner's output).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

CREATOR_ID = "clkht01d40000jv08hvalcvly"
META_FILES = ("release", "model", "sourceset", "source")
BATCH_KINDS = ("features", "activations", "explanations")
_ID_RULE = re.compile(r"[a-z0-9._-]+")
_S, _F, _I = str | None, float | None, int | None

SCHEMA: dict[str, dict[str, Any]] = {
    "release": {"name": str, "description": str, "creatorName": str, "creatorId": str, "visibility": str,
                "isNewUi": bool, "featured": bool, "descriptionShort": _S, "urls": list[str], "creatorEmail": _S,
                "creatorNameShort": _S, "defaultSourceSetName": _S, "defaultSourceId": _S,
                "defaultUmapSourceIds": list[str], "createdAt": str},
    "model": {"id": str, "instruct": bool, "creatorId": str, "displayNameShort": str, "displayName": str,
              "tlensId": _S, "dimension": _I, "visibility": str, "defaultSourceSetName": _S, "defaultSourceId": _S,
              "inferenceEnabled": bool, "layers": int, "neuronsPerLayer": int, "createdAt": str, "owner": str,
              "updatedAt": str, "website": _S},
    "sourceset": {"modelId": str, "name": str, "creatorId": str, "hasDashboards": bool, "visibility": str,
                  "description": str, "type": str, "creatorName": str, "urls": list[str], "creatorEmail": _S,
                  "releaseName": _S, "defaultOfModelId": _S, "defaultRange": int, "defaultShowBreaks": bool,
                  "showDfa": bool, "showCorrelated": bool, "showHeadAttribution": bool, "showUmap": bool,
                  "createdAt": str},
    "source": {"id": str, "modelId": str, "setName": str, "creatorId": str, "hasDashboards": bool,
               "inferenceEnabled": bool, "inferenceHosts": list[str], "saelensConfig": _S, "saelensRelease": _S,
               "saelensSaeId": _S, "hfRepoId": _S, "hfFolderId": _S, "visibility": str, "defaultOfModelId": _S,
               "hasUmap": bool, "hasUmapLogSparsity": bool, "hasUmapClusters": bool, "num_prompts": _I,
               "num_tokens_in_prompt": _I, "dataset": _S, "notes": _S, "createdAt": str},
    "features": {"modelId": str, "layer": str, "index": str, "creatorId": _S, "createdAt": str, "maxActApprox": _F,
                 "hasVector": bool, "vector": list[float], "vectorLabel": _S, "vectorDefaultSteerStrength": _F,
                 "hookName": _S, "topkCosSimIndices": list[int], "topkCosSimValues": list[float],
                 "neuron_alignment_indices": list[int], "neuron_alignment_values": list[float],
                 "neuron_alignment_l1": list[float], "correlated_neurons_indices": list[int],
                 "correlated_neurons_pearson": list[float], "correlated_neurons_l1": list[float],
                 "correlated_features_indices": list[int], "correlated_features_pearson": list[float],
                 "correlated_features_l1": list[float],
                 "neg_str": list[str], "neg_values": list[float], "pos_str": list[str], "pos_values": list[float],
                 "frac_nonzero": float, "freq_hist_data_bar_heights": list[float],
                 "freq_hist_data_bar_values": list[float], "logits_hist_data_bar_heights": list[float],
                 "logits_hist_data_bar_values": list[float], "decoder_weights_dist": list[float],
                 "sourceSetName": _S},
    "activations": {"id": str, "tokens": list[str], "index": str, "layer": str, "modelId": str, "maxValue": float,
                    "maxValueTokenIndex": int, "minValue": float, "values": list[float], "creatorId": str,
                    "dataSource": _S, "dataIndex": _S, "dfaValues": list[float], "dfaTargetIndex": _I,
                    "dfaMaxValue": _F, "createdAt": str, "lossValues": list[float], "logitContributions": _S,
                    "binMin": _F, "binMax": _F, "binContains": _F, "qualifyingTokenIndex": _I,
                    "zIndices": list[list[int]] | None, "zValues": list[float] | None},
    "explanations": {"id": str, "modelId": str, "layer": str, "index": str, "description": str, "authorId": str,
                     "embedding": list[float] | None, "triggeredById": _S, "typeName": _S,
                     "explanationModelName": _S, "notes": _S, "createdAt": str},
}


def check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not _ID_RULE.fullmatch(value):
        raise ValueError(f"{name} {value!r} is invalid: use only lowercase letters, digits, '-', '.' and '_'")


def _check_features(features: list[dict]) -> None:
    if not features:
        raise ValueError("features is empty: nothing to export")
    seen: set[tuple[int, int]] = set()
    for f in features:
        key = (int(f["layer"]), int(f["index"]))
        if key in seen:
            raise ValueError(f"duplicate feature (layer={key[0]}, index={key[1]})")
        seen.add(key)
        for k, ex in enumerate(f.get("examples") or []):
            if len(ex["tokens"]) != len(ex["values"]) or not ex["values"]:
                raise ValueError(f"feature (layer={key[0]}, index={key[1]}) example {k}: {len(ex['tokens'])} tokens "
                                 f"but {len(ex['values'])} values (they must match and be non-empty)")
        hist = f.get("hist")
        if hist and len(hist["edges"]) != len(hist["counts"]) + 1:
            raise ValueError(f"feature (layer={key[0]}, index={key[1]}): hist needs len(edges) == len(counts) + 1")


def _row(kind: str, **values: Any) -> dict:
    """A record with every field of ``SCHEMA[kind]``, in order: the given values, else the empty value of the type
    (None where nullable, as the converters' dataclass defaults are for the fields we leave unset)."""
    assert set(values) <= set(SCHEMA[kind]), set(values) - set(SCHEMA[kind])

    def empty(t: Any) -> Any:  # [] for lists, None where nullable, else False / "" / 0 / 0.0
        return [] if typing.get_origin(t) is list else None if typing.get_origin(t) else t()

    return {field: values[field] if field in values else empty(t) for field, t in SCHEMA[kind].items()}


def _meta(model_id: str, source_set: str, source_id: str, release: dict, now: str) -> dict[str, dict]:
    common = {"creatorId": CREATOR_ID, "createdAt": now, "visibility": "PUBLIC"}
    return {
        "release": _row("release", **common, name=release["id"], description=release["description"],
                        descriptionShort=release["title"], urls=[release["url"]] if release["url"] else [],
                        creatorName=release["creator"], creatorNameShort=release["creator"]),
        "model": _row("model", **common, id=model_id, instruct=model_id.endswith("-it"), displayNameShort=model_id,
                      displayName=model_id, inferenceEnabled=True, updatedAt=now),
        "sourceset": _row("sourceset", **common, modelId=model_id, name=source_set, hasDashboards=True,
                          description=release["title"], creatorName=release["creator"], releaseName=release["id"],
                          defaultRange=1, defaultShowBreaks=True),
        "source": _row("source", **common, id=source_id, modelId=model_id, setName=source_set, hasDashboards=True),
    }


def _records(f: dict, model_id: str, source_id: str, now: str) -> tuple[dict, list[dict], list[dict]]:
    """One feature -> its Neuron row, its Activation rows and its Explanation rows (zero or one)."""
    key = {"modelId": model_id, "layer": source_id, "index": str(int(f["index"])), "createdAt": now}
    hist, logits = f.get("hist") or {"edges": [], "counts": []}, f.get("logits") or {"pos": [], "neg": []}
    edges = [float(e) for e in hist["edges"]]
    feature = _row("features", **key, creatorId=CREATOR_ID, maxActApprox=float(f["max_act"]),
                   vectorLabel=f.get("label"), vectorDefaultSteerStrength=10.0,
                   neg_str=[t for t, _ in logits["neg"]], neg_values=[float(v) for _, v in logits["neg"]],
                   pos_str=[t for t, _ in logits["pos"]], pos_values=[float(v) for _, v in logits["pos"]],
                   frac_nonzero=float(f["density"]), freq_hist_data_bar_heights=list(hist["counts"]),
                   freq_hist_data_bar_values=[(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)])
    acts = []
    for n, ex in enumerate(f.get("examples") or []):
        values = [float(v) for v in ex["values"]]
        top = values.index(max(values))  # the first maximum, as the converters take it
        acts.append(_row("activations", **key, id=_cuid("activation", model_id, source_id, key["index"], n),
                         tokens=list(ex["tokens"]), maxValue=values[top],
                         maxValueTokenIndex=top, minValue=min(values), values=values, creatorId=CREATOR_ID,
                         binMin=-1.0, binMax=float(f["max_act"]), binContains=-1.0, qualifyingTokenIndex=top))
    expl = [] if f.get("explanation") is None else [
        _row("explanations", **key, id=_cuid("explanation", model_id, source_id, key["index"]),
             description=f["explanation"], authorId=CREATOR_ID,
             typeName="unknown", explanationModelName=f.get("explainer") or "unknown")]
    return feature, acts, expl


def _cuid(*parts: Any) -> str:
    """25 characters, like the converters' pseudo-cuids, but derived from what the record is (its kind, feature
    and position) so that the same inputs give the same bytes."""
    return "c" + hashlib.sha256("\u0000".join(map(str, parts)).encode()).hexdigest()[:24]


def _dump(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=5, mtime=0))
    else:
        path.write_text(text, encoding="utf-8")


def write_export(folder: str | Path, *, model_id: str, source_set: str, release: dict, features: list[dict],
                 batch_size: int = 128, created_at: str | None = None) -> Path:
    """Write ``features`` as a Neuronpedia export under ``folder`` (atomically: built beside it, then renamed).
    ``created_at`` (ISO time, default now) is every record's ``createdAt``: pass a time of the inputs to get
    the same bytes from the same inputs."""
    folder = Path(folder)
    check_id("model_id", model_id)
    check_id("source_set", source_set)
    missing = {"id", "title", "description", "creator", "url"} - set(release)
    if missing:
        raise ValueError(f"release is missing {sorted(missing)}")
    check_id("release id", release["id"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_features(features)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    now = created_at or datetime.now().isoformat()
    try:
        for layer in sorted({int(f["layer"]) for f in features}):
            source_id = f"{layer}-{source_set}"
            src = tmp / model_id / source_id
            for kind in BATCH_KINDS:
                (src / kind).mkdir(parents=True)
            for name, record in _meta(model_id, source_set, source_id, release, now).items():
                _dump(src / f"{name}.jsonl", [record])
            feats = sorted((f for f in features if int(f["layer"]) == layer), key=lambda f: int(f["index"]))
            for n, start in enumerate(range(0, len(feats), batch_size)):
                rows = [_records(f, model_id, source_id, now) for f in feats[start:start + batch_size]]
                for kind, recs in zip(BATCH_KINDS, ([r[0] for r in rows], [a for r in rows for a in r[1]],
                                                    [e for r in rows for e in r[2]]), strict=True):
                    if recs:  # the importer cannot read an empty batch file
                        _dump(src / kind / f"batch-{n}.jsonl.gz", recs)
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            old.rename(folder)  # put the previous export back
        raise
    return folder


def _type_ok(value: Any, t: Any) -> bool:
    origin = typing.get_origin(t)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(t)[0]) for v in value)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, a) for a in typing.get_args(t))
    if t is type(None):
        return value is None
    if t in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if t is float else t)


def _read(path: Path, root: Path, problems: list[str]) -> list[tuple[str, dict]]:
    rel = path.relative_to(root).as_posix()
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return [(f"{rel}:{n}", json.loads(line)) for n, line in enumerate(raw.decode("utf-8").splitlines(), 1)
                if line.strip()]
    except (OSError, EOFError, ValueError) as e:
        problems.append(f"{rel}: unreadable ({e})")
        return []


def _check_record(where: str, kind: str, rec: Any, problems: list[str]) -> None:
    if not isinstance(rec, dict):
        problems.append(f"{where}: record is not a JSON object")
        return
    for field, t in SCHEMA[kind].items():
        if field not in rec:
            problems.append(f"{where}: missing field '{field}'")
        elif not _type_ok(rec[field], t):
            want = getattr(t, "__name__", None) if typing.get_origin(t) is None else None
            problems.append(f"{where}: field '{field}' should be {want or t}, got {type(rec[field]).__name__}")


def _check_links(where: str, kind: str, rec: dict, src: Path, keys: set[tuple], problems: list[str]) -> None:
    key = (rec.get("modelId"), rec.get("layer"), rec.get("index"))
    if key[:2] != (src.parent.name, src.name):
        problems.append(f"{where}: modelId/layer {key[:2]} do not match the folder")
    if kind == "features":
        if key in keys:
            problems.append(f"{where}: duplicate feature {key}")
        keys.add(key)
    elif key not in keys:
        problems.append(f"{where}: refers to feature {key}, which is not in features/")
    if kind == "activations" and len(rec.get("tokens") or []) != len(rec.get("values") or []):
        problems.append(f"{where}: tokens and values differ in length")


def validate_export(folder: str | Path) -> list[str]:
    """Every problem found in an export folder (empty when it is valid)."""
    root, problems = Path(folder), []
    sources = sorted(p for p in root.glob("*/*") if p.is_dir())
    if not sources:
        return [f"{root}: no <model_id>/<source_id> folders"]
    for src in sources:
        for name in META_FILES:
            recs = _read(src / f"{name}.jsonl", root, problems) if (src / f"{name}.jsonl").exists() else []
            if len(recs) != 1:
                problems.append(f"{src.relative_to(root).as_posix()}/{name}.jsonl: expected 1 record, got {len(recs)}")
            for where, rec in recs:
                _check_record(where, name, rec, problems)
        keys: set[tuple] = set()
        for kind in BATCH_KINDS:  # features first: the other two refer to them
            for path in sorted((src / kind).glob("*")):
                if not re.fullmatch(r"batch-\d+\.jsonl\.gz", path.name):
                    problems.append(f"{path.relative_to(root).as_posix()}: not named batch-N.jsonl.gz")
                    continue
                for where, rec in _read(path, root, problems):
                    _check_record(where, kind, rec, problems)
                    if isinstance(rec, dict):
                        _check_links(where, kind, rec, src, keys, problems)
    return problems
