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

Failed features are retried, not kept: a rerun with the same settings (no ``--overwrite``) works again on every
feature whose status is ``error``, in a finished folder as in an interrupted one (their requests skip the answer
cache, :meth:`rank1.autointerp.client.ChatClient.refreshing`), and keeps the ``ok`` and ``skipped`` ones. A
finished folder with failed features is therefore never up to date. When more than ``max_failed_share`` of the
attempted features (``skipped`` ones excluded) failed, the run still writes everything, then raises
:class:`TooManyFailures` naming the folder, the count and the most common failure. The threshold is not one of
the settings: changing it recomputes nothing.

The counts of ``summary.json`` that describe failures agree by construction: ``status`` counts the records
(``error``: the explanation failed); ``failed_steps`` counts, per step, the attempted features whose step failed
(so ``failed_steps.explain == status.error``; a scoring or categorising step can fail in an ``ok`` feature);
``failures`` holds ``attempted`` (``ok`` + ``error``), ``failed`` (``status.error``), their ``share``, the
threshold and ``causes``, the explanation errors by message (most common first; they sum to ``failed``).
``usage`` is the traffic of this invocation only (requests, answers from the cache, retries, tokens and
``failed_requests``: requests that got no usable answer; an answer that came but did not parse is a failure of
its step, not of its request); records kept from an earlier invocation cost nothing now.

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
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import read_json, reuse_finished, settings_digest, write_json, write_run_metadata, write_text
from rank1.autointerp.categories import Categoriser
from rank1.autointerp.client import Aborted, EndpointError
from rank1.autointerp.examples import build_examples
from rank1.autointerp.explainers import Explainer
from rank1.autointerp.prompts import CLASSES
from rank1.autointerp.scorers import Scorer
from rank1.errors import CorruptArtifact, Rank1Error
from rank1.topk import TopKResult

log = logging.getLogger(__name__)
NOT_SETTINGS = ("max_failed_share",)  # options that decide no record: left out of the settings and their key
MAX_CAUSES = 10  # distinct failure messages listed in the summary (the rest are counted together)


class AutointerpError(Rank1Error, ValueError):
    """Input the autointerp stage cannot use (the message says what to do)."""


class TooManyFailures(AutointerpError):
    """More than ``max_failed_share`` of the attempted features failed (the records are written)."""


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
    max_failed_share: float = 0.1  # more failed features than this share of the attempted ones: an error

    def __post_init__(self):
        if self.n_examples < 1 or self.window < 0 or self.concurrency < 1:
            raise ValueError(f"need n_examples >= 1, window >= 0 and concurrency >= 1; got {self.n_examples}, "
                             f"{self.window}, {self.concurrency}")
        if min(self.per_doc_cap, self.n_score_active, self.n_score_quiet, self.max_features) < 0:
            raise ValueError("per_doc_cap, n_score_active, n_score_quiet and max_features must be >= 0")
        if not 0 <= self.max_failed_share <= 1:
            raise ValueError(f"max_failed_share must be a share between 0 and 1, got {self.max_failed_share}")

    def settings(self) -> dict[str, Any]:
        """The options that decide the records (part of the run's settings): all but :data:`NOT_SETTINGS`."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_SETTINGS}


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
        done[rec["feature"]] = rec  # a retried feature's later record replaces its failed one
    if torn:
        write_text(path, "\n".join(complete) + "\n")
    return done


def _finished_with_failures(out: Path, key: str) -> list[dict] | None:
    """The records of the finished run in ``out`` when it was made with the settings ``key`` and some of its
    features failed; None otherwise (no finished run, other settings: :func:`reuse_finished` decides)."""
    config, results = out / K.CONFIG_JSON, out / K.AUTOINTERP_RESULTS
    if not config.is_file() or not results.is_file():
        return None
    redo = f"the finished work in {out} is not whole: pass --overwrite to recompute it"
    saved = read_json(config, redo)
    if not isinstance(saved, dict) or saved.get("settings_key") != key:
        return None
    try:
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifact(f"{results} is damaged or cut short ({e}); {redo}") from None
    return records if any(r.get("status") == "error" for r in records) else None


def _failures(records: list[dict], max_share: float) -> dict[str, Any]:
    """The failure counts of the summary (module docstring): attempted, failed, share, threshold, causes."""
    status = Counter(r["status"] for r in records)
    attempted, failed = status["ok"] + status["error"], status["error"]
    causes = Counter(r["errors"].get("explain", "unknown") for r in records if r["status"] == "error")
    listed = dict(causes.most_common(MAX_CAUSES))
    if failed > sum(listed.values()):
        listed["(other causes)"] = failed - sum(listed.values())
    return {"attempted": attempted, "failed": failed, "share": failed / attempted if attempted else 0.0,
            "max_failed_share": max_share, "causes": listed}


def _too_many_failures(out: Path, failures: dict[str, Any]) -> TooManyFailures:
    cause, n = next(iter(failures["causes"].items()))
    return TooManyFailures(
        f"{out}: {failures['failed']} of {failures['attempted']} attempted features failed "
        f"({failures['share']:.0%}, more than --max_failed_share {failures['max_failed_share']:g}); most common "
        f"failure ({n}x): {cause[:300]}. The records are written; fix the endpoint or the model (--llm_base_url, "
        f"--llm_model) and rerun the same command: it retries only the failed features and keeps the others")


def _summary(records: list[dict], usage: dict[str, int], seconds: float, max_failed_share: float) -> dict[str, Any]:
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
            "failures": _failures(records, max_failed_share),
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
    the inputs' identities). A finished folder with the same settings is left as it is, unless some of its
    features failed (they are retried); one of other settings is refused unless ``overwrite``. Raises
    :class:`TooManyFailures` after writing when more than ``options.max_failed_share`` of the attempted
    features failed."""
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
    settings = {"options": opt.settings(), **parts, "features": features, "topk": topk_id}
    key = settings_digest(settings)
    journal = out / K.AUTOINTERP_JOURNAL
    prepared = _prepare(out, settings, key, overwrite, len(features))
    if prepared is None:
        return out
    done, retry = prepared

    clients = _clients(explainer, scorer, categoriser)
    t0 = time.time()
    bar = tqdm(total=len(features), initial=len(done), desc=f"autointerp {out.name}", unit="feature",
               dynamic_ncols=True)
    failures = Counter(r["status"] for r in done.values())

    def one(f: int) -> dict[str, Any]:
        with ExitStack() as stack:
            if f in retry:  # new answers, not the cached ones that failed
                for c in clients:
                    stack.enter_context(c.refreshing())
            return explain_feature(res, f, explainer, scorer, categoriser, opt)

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

        fatal = _work([f for f in features if f not in done], one, opt.concurrency, finish)
    bar.close()
    if fatal is not None:
        raise AutointerpError(f"{fatal} ({len(done)} of {len(features)} features finished and kept in {journal})")

    records = [done[f] for f in features]
    write_text(out / K.AUTOINTERP_RESULTS, "".join(json.dumps(r) + "\n" for r in records))
    summary = _summary(records, _usage(clients), time.time() - t0, opt.max_failed_share)
    write_json(out / K.AUTOINTERP_SUMMARY, summary)
    write_run_metadata(out, config or {}, {"settings": settings, "settings_key": key})
    journal.unlink(missing_ok=True)
    log.info("autointerp: %s in %s", summary["status"], out)
    failed = summary["failures"]
    if failed["share"] > opt.max_failed_share:
        raise _too_many_failures(out, failed)
    if failed["failed"]:
        log.warning("%d of %d attempted features failed (most common: %s); rerun the same command to retry them",
                    failed["failed"], failed["attempted"], next(iter(failed["causes"]))[:300])
    return out


def _prepare(out: Path, settings: dict[str, Any], key: str, overwrite: bool, n_features: int
             ) -> tuple[dict[int, dict], set[int]] | None:
    """None when ``out`` holds the finished run of these settings without failures (nothing to do); else make
    ``out`` ready (a journal with the settings' key) and return the records to keep, by feature, and the features
    to retry (those that failed, in a finished or an interrupted run)."""
    journal = out / K.AUTOINTERP_JOURNAL
    finished = None if overwrite else _finished_with_failures(out, key)
    # config.json records the settings: each part (each option) is compared, so a refusal names what changed
    expected = {f"settings.options.{k}": v for k, v in settings["options"].items()}
    expected |= {f"settings.{k}": v for k, v in settings.items() if k != "options"}
    if finished is None and reuse_finished(out / K.CONFIG_JSON, expected, overwrite) is not None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in (K.CONFIG_JSON, K.ARGV_JSON, K.AUTOINTERP_RESULTS, K.AUTOINTERP_SUMMARY, K.AUTOINTERP_JOURNAL):
            (out / name).unlink(missing_ok=True)
    if finished is not None and not journal.is_file():  # else a retry was interrupted: its journal goes on
        write_text(journal, "".join(json.dumps(r) + "\n" for r in [{"settings_key": key}, *finished]))
    done = _read_journal(journal, key)
    if not journal.is_file():
        write_text(journal, json.dumps({"settings_key": key}) + "\n")
    retry = {f for f, r in done.items() if r["status"] == "error"}
    for f in retry:
        del done[f]
    if retry:
        log.info("retrying %d failed of %d features in %s (%d finished ones kept)", len(retry), n_features, out,
                 len(done))
    elif done:
        log.info("resuming: %d of %d features already done in %s", len(done), n_features, out)
    return done, retry


def _work(todo: list[int], one: Callable[[int], dict], concurrency: int, finish: Callable[[dict], None]
          ) -> EndpointError | None:
    """``finish(one(f))`` for each feature of ``todo`` on ``concurrency`` threads (inline for one); returns the
    first fatal endpoint error, after the features in flight have finished."""
    if concurrency == 1:
        for f in todo:
            try:
                finish(one(f))
            except EndpointError as e:
                return e
        return None
    fatal = None
    pending = iter(todo)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running = set()
        for f in pending:
            running.add(pool.submit(one, f))
            if len(running) >= 2 * concurrency:
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
                    running.add(pool.submit(one, f))
                    if len(running) >= 2 * concurrency:
                        break
    return fatal
