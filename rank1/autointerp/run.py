"""Explain, categorise and score every feature of a top-k artifact, resumably.

:func:`run_autointerp` is the entry point every stage calls (LoRA features, MLP neurons, SAE latents): it
takes a :class:`rank1.topk.TopKResult` (or its folder), an explainer, a scorer and a categoriser, and writes
into ``out``:

- ``explanations.partial.jsonl`` while it runs: a header line (the settings' key), then one record per
  finished feature, appended as features finish; a rerun with the same settings skips those (a killed or
  failed run loses nothing finished), with other settings it stops and asks for ``--overwrite``;
- at the end, atomically: ``explanations.jsonl`` (one record per feature, in feature order),
  ``summary.json`` (counts, mean scores, requests and tokens), then ``config.json`` (the settings; written
  last, it marks the folder finished) and ``argv.json``; the journal is removed.

A record is the feature's own record from ``features.json`` (name, layer, polarity, ...; whatever the
producer wrote) plus ``status`` (ok / error / skipped), ``explanation``, ``classification`` (0 / 1 / 2),
``class_name``, ``reasoning``, ``category``, ``detection`` and ``fuzzing`` (balanced accuracy and counts),
``errors`` (what failed, by step) and, for an answer that did not parse, ``raw_answer``. Features without
top examples (a polarity that never fires) are ``skipped``.

Work runs on ``concurrency`` threads (each feature's requests in order; an LLM client bounds the requests
in flight); an :class:`EndpointError` (endpoint gone, key refused) stops the run after the features in
flight finish, keeps them, and is raised once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import reuse_finished, settings_digest, write_json, write_run_metadata, write_text
from rank1.autointerp.categories import Categoriser
from rank1.autointerp.client import Aborted, EndpointError
from rank1.autointerp.examples import build_examples
from rank1.autointerp.explainers import Explainer
from rank1.autointerp.prompts import CLASSES
from rank1.autointerp.scorers import Scorer
from rank1.topk import TopKResult

log = logging.getLogger(__name__)


class AutointerpError(ValueError):
    """Input the autointerp stage cannot use (the message says what to do)."""


@dataclass
class AutointerpOptions:
    n_examples: int = 10  # top examples an explanation is written from
    window: int = 8  # tokens shown on each side of an example's peak
    per_doc_cap: int = 0  # at most this many shown examples from one document (0: no cap)
    n_score_active: int = 0  # held-out activating examples scored (0: all)
    n_score_quiet: int = 0  # held-out non-activating examples scored (0: all)
    seed: int = 0  # example order, fuzzing marks, feature sample
    concurrency: int = 1  # features worked on at once
    max_features: int = 0  # a seeded random sample of this many features (0: all)

    def __post_init__(self):
        if self.n_examples < 1 or self.window < 0 or self.concurrency < 1:
            raise ValueError(f"need n_examples >= 1, window >= 0 and concurrency >= 1; got {self.n_examples}, "
                             f"{self.window}, {self.concurrency}")
        if min(self.per_doc_cap, self.n_score_active, self.n_score_quiet, self.max_features) < 0:
            raise ValueError("per_doc_cap, n_score_active, n_score_quiet and max_features must be >= 0")


def select_features(res: TopKResult, max_features: int, seed: int) -> list[int]:
    n = len(res.features)
    if not max_features or max_features >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=max_features, replace=False).tolist())


def explain_feature(res: TopKResult, f: int, explainer: Explainer, scorer: Scorer | None,
                    categoriser: Categoriser | None, opt: AutointerpOptions) -> dict[str, Any]:
    """The record of one feature (see the module docstring)."""
    meta = dict(res.features[f])
    rec: dict[str, Any] = {**meta, "feature": f, "status": "ok", "explanation": None, "classification": None,
                           "class_name": None, "reasoning": "", "category": None, "detection": None,
                           "fuzzing": None, "n_examples": 0, "errors": {}}
    ex = build_examples(res, f, opt.n_examples, opt.window, opt.per_doc_cap, opt.n_score_active,
                        opt.n_score_quiet, opt.seed)
    rec["n_examples"] = len(ex.top)
    if not ex.top:
        rec.update(status="skipped", errors={"explain": "no activating examples"})
        return rec
    e = explainer.explain(ex)
    rec.update(explanation=e.text, classification=e.classification, class_name=CLASSES.get(e.classification),
               reasoning=e.reasoning)
    if e.error:
        rec.update(status="error", errors={"explain": e.error})
        if e.raw is not None:
            rec["raw_answer"] = e.raw
        return rec
    if categoriser is not None:
        rec["category"], err = categoriser.categorise(ex, e)
        if err:
            rec["errors"]["category"] = err
    if scorer is not None:
        scores = scorer.score(ex, e)
        for method, result in scores.items():
            rec[method] = result
            if result.get("error"):
                rec["errors"][method] = result["error"]
    return rec


def _read_journal(path: Path, key: str) -> dict[int, dict]:
    """Finished records of an interrupted run with the same settings; a torn last line is dropped."""
    if not path.is_file():
        return {}
    lines = path.read_text().split("\n")
    complete, torn = lines[:-1], lines[-1]  # the text after the last newline was being written
    try:
        header = json.loads(complete[0]) if complete else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("settings_key") != key:
        raise AutointerpError(f"{path.parent} holds unfinished results made with other settings (or another "
                              f"top-k artifact); pass --overwrite to start again")
    done = {}
    for line in complete[1:]:
        rec = json.loads(line)
        done[rec["feature"]] = rec
    if torn:
        write_text(path, "\n".join(complete) + "\n")
    return done


def _summary(records: list[dict], usage: dict[str, int], seconds: float) -> dict[str, Any]:
    status = Counter(r["status"] for r in records)
    rated = [r for r in records if r["status"] == "ok"]

    def mean(method: str) -> float | None:
        vals = [r[method]["balanced_accuracy"] for r in rated
                if r.get(method) and r[method].get("balanced_accuracy") is not None]
        return float(np.mean(vals)) if vals else None

    return {"n_features": len(records), "status": dict(status),
            "classes": {CLASSES[c]: sum(r["classification"] == c for r in rated) for c in CLASSES},
            "categories": dict(Counter(r["category"] for r in rated if r["category"])),
            "failed_steps": dict(Counter(k for r in records if r["status"] != "skipped" for k in r["errors"])),
            "mean_detection": mean("detection"), "mean_fuzzing": mean("fuzzing"),
            "usage": usage, "seconds": round(seconds, 1)}


def _clients(*parts) -> list:
    seen = {}
    for p in parts:
        c = getattr(p, "client", None)
        if c is not None:
            seen[id(c)] = c
    return list(seen.values())


def _usage(clients: list) -> dict[str, int]:
    total: Counter = Counter()
    for c in clients:
        total.update(c.usage.to_dict())
    return dict(total)


def run_autointerp(topk: TopKResult | str | Path, out: str | Path, explainer: Explainer,
                   scorer: Scorer | None = None, categoriser: Categoriser | None = None,
                   options: AutointerpOptions | None = None, config: dict[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Explain (and categorise, and score) the features of ``topk`` into ``out``; returns ``out``.

    ``config`` is what the caller wants recorded in ``config.json`` beside the settings (its own config,
    the inputs' identities). A finished folder with the same settings is left as it is; one of other settings
    is refused unless ``overwrite``."""
    opt = options or AutointerpOptions()
    out = Path(out)
    src = str(topk) if not isinstance(topk, TopKResult) else None
    res = TopKResult.load(topk) if src is not None else topk
    if not res.features:
        raise AutointerpError(f"the top-k artifact {src or ''} holds no features; recompute it (2.1 / 2.5)")
    if not any(f.get("n_top", 1) > 0 for f in res.features):
        raise AutointerpError(f"no feature of the top-k artifact {src or ''} has a top example (every feature "
                              f"is empty); recompute it from a store with activations")
    features = select_features(res, opt.max_features, opt.seed)
    parts = {"explainer": explainer.describe(), "scorer": scorer.describe() if scorer else None,
             "categoriser": categoriser.describe() if categoriser else None}
    topk_id = {k: res.meta.get(k) for k in ("store_key", "settings", "n_tokens")}  # not paths: folders can move
    topk_id.update(weights_sha256=(res.meta.get("identity") or {}).get("weights_sha256"), n_features=len(res.features))
    settings = {"options": asdict(opt), **parts, "features": features, "topk": topk_id}
    key = settings_digest(settings)
    journal = out / K.AUTOINTERP_JOURNAL
    # config.json records the settings: each part (each option) is compared, so a refusal names what changed
    expected = {f"settings.options.{k}": v for k, v in settings["options"].items()}
    expected |= {f"settings.{k}": v for k, v in settings.items() if k != "options"}
    if reuse_finished(out / K.CONFIG_JSON, expected, overwrite) is not None:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in (K.CONFIG_JSON, K.ARGV_JSON, K.AUTOINTERP_RESULTS, K.AUTOINTERP_SUMMARY, K.AUTOINTERP_JOURNAL):
            (out / name).unlink(missing_ok=True)
    done = _read_journal(journal, key)
    if not journal.is_file():
        write_text(journal, json.dumps({"settings_key": key}) + "\n")
    todo = [f for f in features if f not in done]
    if done:
        log.info("resuming: %d of %d features already done in %s", len(done), len(features), out)

    clients = _clients(explainer, scorer, categoriser)
    t0 = time.time()
    bar = tqdm(total=len(features), initial=len(done), desc=f"autointerp {out.name}", unit="feature",
               dynamic_ncols=True)
    failures = Counter(r["status"] for r in done.values())
    with journal.open("a") as fh:
        def finish(rec: dict) -> None:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[rec["feature"]] = rec
            failures[rec["status"]] += 1
            bar.update(1)
            u = _usage(clients)
            post = {"errors": failures["error"]}
            if clients:
                post.update(req=u["requests"], cached=u["cached"], tok_in=u["prompt_tokens"],
                            tok_out=u["completion_tokens"], retries=u["retries"])
            bar.set_postfix(post, refresh=False)

        fatal = _work(res, todo, explainer, scorer, categoriser, opt, finish)
    bar.close()
    if fatal is not None:
        raise AutointerpError(f"{fatal} ({len(done)} of {len(features)} features finished and kept in {journal})")

    records = [done[f] for f in features]
    write_text(out / K.AUTOINTERP_RESULTS, "".join(json.dumps(r) + "\n" for r in records))
    summary = _summary(records, _usage(clients), time.time() - t0)
    write_json(out / K.AUTOINTERP_SUMMARY, summary)
    write_run_metadata(out, config or {}, {"settings": settings, "settings_key": key})
    journal.unlink(missing_ok=True)
    log.info("autointerp: %s in %s", summary["status"], out)
    return out


def _work(res, todo, explainer, scorer, categoriser, opt, finish) -> EndpointError | None:
    """Run ``todo`` (inline for one thread); returns the first fatal endpoint error, after the features in
    flight have finished."""
    if opt.concurrency == 1:
        for f in todo:
            try:
                finish(explain_feature(res, f, explainer, scorer, categoriser, opt))
            except EndpointError as e:
                return e
        return None
    fatal = None
    pending = iter(todo)
    with ThreadPoolExecutor(max_workers=opt.concurrency) as pool:
        running = set()
        for f in pending:
            running.add(pool.submit(explain_feature, res, f, explainer, scorer, categoriser, opt))
            if len(running) >= 2 * opt.concurrency:
                break
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    finish(fut.result())
                except EndpointError as e:  # the first real cause, not a thread stopped because of it
                    if fatal is None or (isinstance(fatal, Aborted) and not isinstance(e, Aborted)):
                        fatal = e
            if fatal is None:
                for f in pending:
                    running.add(pool.submit(explain_feature, res, f, explainer, scorer, categoriser, opt))
                    if len(running) >= 2 * opt.concurrency:
                        break
    return fatal
