"""Counterfactual rollouts: several sampled attempts per problem, graded; what the adapters did
differently in the correct and the incorrect attempts of the same problem.

A problem is *mixed* when at least one complete rollout (the thinking ended before its budget) is
correct and one is incorrect. For every rollout the adapter scalars (and, as a baseline, the matched
base-model MLP neurons of stage 2.4) are read teacher-forced on prompt + thinking and averaged over the
thinking and over its last tokens. Per mixed problem and feature, d = mean over correct rollouts - mean
over incorrect ones; across problems, a sign-flip permutation test (each problem's d is symmetric about 0
under the null) gives one p-value per feature, corrected with Benjamini-Hochberg. With n mixed problems
the test cannot return a p below 2 / 2^n, so a feature needs about log2(features / q) + 1 problems to pass;
:func:`power` records both, and a result that could not have reached significance is marked
``underpowered`` rather than read as "no adapter differs".
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rank1.artifacts import write_text
from rank1.batching import pad_ids
from rank1.benchmarks import Benchmark
from rank1.generate import Budget, Sampling, think_prompt
from rank1.stats import fdr_bh, sign_flip_min_p, sign_flip_test, sign_flip_units_needed


def sample_rollouts(generate: Callable, tokenizer, bench: Benchmark, n_samples: int, budget: Budget,
                    sampling: Sampling, partial: Path, problems_per_call: int = 8) -> list[dict[str, Any]]:
    """``n_samples`` graded rollouts per problem; each group of problems is saved under ``partial`` as it
    finishes, so a killed run resumes. ``generate(prompts, budget, desc, sampling)`` is a backend's.
    Rollout ``j`` of problem ``i`` (overall index ``i * n_samples + j``) uses seed ``(seed, that index)``."""
    out = []
    groups = range(0, len(bench.items), problems_per_call)
    for lo in tqdm(groups, desc="rollouts", unit="group"):
        path = partial / f"rollouts_{lo:05d}.jsonl"
        if path.is_file():
            out += [json.loads(line) for line in path.read_text().splitlines()]
            continue
        items = bench.items[lo:lo + problems_per_call]
        prompts = [think_prompt(tokenizer, it.question) for it in items for _ in range(n_samples)]
        gens = generate(prompts, budget, f"problems {lo}..{lo + len(items) - 1}",
                        dataclasses.replace(sampling, first_item=lo * n_samples))
        recs = []
        for k, g in enumerate(gens):
            item = items[k // n_samples]
            pred, ok = bench.grade(g.answer, item.gold)
            recs.append({"id": item.id, "sample": k % n_samples, "gold": item.gold, "pred": pred,
                         "correct": bool(ok), "complete": not g.think_budget_hit, **g.to_dict()})
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        out += recs
    return out


def mixed_problems(records: list[dict], require_complete: bool = True) -> list[str]:
    """Problem ids with at least one correct and one incorrect (complete, if required) rollout, in
    first-seen order."""
    seen: dict[str, set[bool]] = {}
    for r in records:
        if r["complete"] or not require_complete:
            seen.setdefault(r["id"], set()).add(r["correct"])
    return [pid for pid, grades in seen.items() if grades == {True, False}]


def rollout_ids(tokenizer, question: str, thinking: str) -> tuple[list[int], int]:
    """(prompt + thinking token ids, index of the first thinking token)."""
    prompt = tokenizer(think_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    return prompt + tokenizer(thinking, add_special_tokens=False)["input_ids"], len(prompt)


def trace_means(capture, seqs: list[tuple[list[int], int]], last: int, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per rollout and site: mean activation over the thinking (``trace_RS``) and over its last ``last``
    tokens (``last_RS``); ``capture(ids_BT, mask_BT)`` gives ``acts_BTS`` (see :class:`rank1.capture.Capture`)."""
    trace, tail = [], []
    for lo in tqdm(range(0, len(seqs), batch_size), desc="activations", unit="batch", leave=False):
        chunk = seqs[lo:lo + batch_size]
        ids_BT, mask_BT = pad_ids([ids for ids, _ in chunk], 0)
        acts_BTS = capture(ids_BT, mask_BT).cpu()
        for b, (ids, start) in enumerate(chunk):
            span = acts_BTS[b, start:len(ids)] if len(ids) > start else acts_BTS[b, len(ids) - 1:len(ids)]
            trace.append(span.mean(0))
            tail.append(span[-last:].mean(0))
    return {"trace_RS": torch.stack(trace), "last_RS": torch.stack(tail)}


def paired_differences(acts_RS: np.ndarray, records: list[dict], problems: list[str],
                       require_complete: bool = True) -> np.ndarray:
    """[P, S]: per mixed problem, mean over its correct (complete) rollouts - mean over its incorrect ones."""
    rows = []
    for pid in problems:
        mine = [(i, r) for i, r in enumerate(records) if r["id"] == pid and (r["complete"] or not require_complete)]
        good = [i for i, r in mine if r["correct"]]
        bad = [i for i, r in mine if not r["correct"]]
        rows.append(acts_RS[good].mean(0) - acts_RS[bad].mean(0))
    return np.stack(rows) if rows else np.zeros((0, acts_RS.shape[1]))


def power(n_problems: int, n_features: int, alpha: float, n_resamples: int) -> dict[str, Any]:
    """What the sign-flip test with Benjamini-Hochberg can detect at all on ``n_problems`` mixed problems:
    the smallest p it can return (:func:`rank1.stats.sign_flip_min_p`; 2 / 2^n enumerated), the mixed
    problems one feature needs to pass BH at ``alpha`` among ``n_features`` (its p must reach
    alpha / n_features), and, short of that, how many features would all have to reach the smallest p
    together before BH lets any through (BH passes the k smallest when p_(k) <= k alpha / m).
    ``underpowered``: one feature cannot pass on its own."""
    min_p = sign_flip_min_p(n_problems, n_resamples) if n_problems >= 1 else 1.0
    needed = sign_flip_units_needed(n_features, alpha, n_resamples)
    return {"min_p_possible": min_p, "bh_threshold_single": alpha / n_features, "problems_needed": needed,
            "features_needed_at_min_p": min(n_features, math.ceil(n_features * min_p / alpha - 1e-9))
            if min_p <= alpha else None,
            "underpowered": bool(min_p > alpha / n_features)}


def compare(d_PS: np.ndarray, names: list[str], n_resamples: int, alpha: float = 0.05) -> dict[str, Any]:
    """Sign-flip p-values per feature, BH-adjusted, the features sorted by p, and the power of the test on
    this many problems (:func:`power`): an underpowered result is not evidence that no adapter differs."""
    pw = power(len(d_PS), len(names), alpha, n_resamples)
    if len(d_PS) < 2:
        return {"n_problems": len(d_PS), "tested": False, "significant": [], "alpha": alpha, **pw,
                "underpowered": True, "note": "fewer than 2 mixed problems: nothing can be tested"}
    p_S = sign_flip_test(d_PS, n_resamples)
    q_S = fdr_bh(p_S)
    std = d_PS.std(0, ddof=1)
    effect = np.divide(d_PS.mean(0), std, out=np.zeros_like(std), where=std > 0)
    order = np.argsort(p_S, kind="stable")
    rows = [{"feature": names[s], "mean_diff": float(d_PS[:, s].mean()), "effect_size": float(effect[s]),
             "p": float(p_S[s]), "q_bh": float(q_S[s])} for s in order]
    return {"n_problems": len(d_PS), "tested": True, "alpha": alpha, **pw,
            "significant": [r for r in rows if r["q_bh"] < alpha], "features": rows, "p": p_S.tolist(),
            "q_bh": q_S.tolist()}


def power_text(res: dict[str, Any]) -> str:
    """The power of one test in words (for the log and the report)."""
    need = res.get("problems_needed")
    need_text = f"{need} mixed problems needed for one feature to pass BH" if need is not None else \
        "more sign flips needed for any feature to pass BH"
    head = f"{res['n_problems']} mixed problems: smallest attainable p {res['min_p_possible']:.3g} vs. " \
           f"{res['bh_threshold_single']:.2g} for one feature ({need_text})"
    if not res.get("underpowered"):
        return head
    k = res.get("features_needed_at_min_p")
    more = f"; only if {k} features all reached it together" if k is not None else ""
    return f"{head}; underpowered: no single feature can be significant{more}"
