"""Correctness probes: can a rollout's adapter activations predict whether its answer is right?

Logistic regression scored out of fold: the outer split is ``GroupKFold`` by problem, so a problem's
rollouts are never both trained and scored on. Inside each outer training fold the features are centred
and scaled with that fold's statistics (``StandardScaler``), the intercept is kept, and the L2 strength
``C`` is chosen by a grouped inner cross-validation. Each fold has its own model, so its scores carry an
offset of their own (its intercept, its training means); pooled across folds that offset would decide the
AUC, and the intercept's offset follows the training folds' base rate, which is anticorrelated with the
held-out fold's. The AUC therefore compares rollouts only within a fold (:func:`rank1.stats.stratified_auc`),
inner and outer alike. The inner search is written out rather than ``GridSearchCV`` for two reasons: it
scores the same within-fold AUC as the outer loop (sklearn's ``roc_auc`` scorer fails on a one-class
validation fold), and it is several times cheaper, which the permutation test below needs.

Each feature set gets one ROC-AUC with a CI from resampling problems (:func:`rank1.stats.grouped_auc`; the
fitted models held fixed) and a permutation test that refits everything: problems' label blocks are
shuffled among problems with as many rollouts (each problem keeps its own mix of grades, only the link
to its activations is broken), the whole cross-validation is repeated, and the p-value and the null's
2.5/97.5 percentiles are reported. Baselines go through the same procedure: the rollout's thinking
length alone, and the matched base-model MLP neurons; the majority class scores a constant (AUC 0.5).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from rank1.interventions.config import PROBE
from rank1.stats import stratified_auc

DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
NULL_BAND = (2.5, 97.5)  # percentiles of the permutation null that are reported


def fold_of_rows(groups_N: np.ndarray, n_splits: int) -> np.ndarray:
    """The outer fold of every row: ``GroupKFold`` by problem (deterministic given the groups)."""
    groups_N = np.asarray(groups_N)
    n_groups = len(np.unique(groups_N))
    if n_groups < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 problems, got {n_groups}")
    folds_N = np.full(len(groups_N), -1)
    for k, (_, test) in enumerate(GroupKFold(n_splits=min(n_splits, n_groups)).split(groups_N, groups=groups_N)):
        folds_N[test] = k
    return folds_N


def _fit(X_NF: np.ndarray, y_N: np.ndarray, c: float) -> Pipeline:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning, RuntimeWarning))
        return model.fit(X_NF, y_N)


def choose_c(X_NF: np.ndarray, y_N: np.ndarray, groups_N: np.ndarray, Cs, inner_splits: int) -> float:
    """The ``C`` with the best within-fold AUC of a grouped inner cross-validation (ties: the smallest C,
    the strongest regularisation); the middle of ``Cs`` when there are too few problems or no inner fold
    can be scored."""
    Cs = sorted(float(c) for c in Cs)
    n_inner = min(inner_splits, len(np.unique(groups_N)))
    if n_inner < 2 or len(Cs) == 1:
        return Cs[len(Cs) // 2]
    folds_N = fold_of_rows(groups_N, n_inner)
    best, best_auc = Cs[len(Cs) // 2], -np.inf
    for c in Cs:
        scores_N = np.zeros(len(y_N))
        for k in np.unique(folds_N):
            train = folds_N != k
            if len(set(y_N[train].tolist())) == 2:
                scores_N[~train] = _fit(X_NF[train], y_N[train], c).decision_function(X_NF[~train])
        auc = stratified_auc(y_N, scores_N, folds_N)
        if np.isfinite(auc) and auc > best_auc + 1e-12:
            best, best_auc = c, auc
    return best


def out_of_fold_scores(X_NF: np.ndarray, y_N: np.ndarray, groups_N: np.ndarray, n_splits: int = 5,
                       Cs=DEFAULT_CS, inner_splits: int = 3) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(a score for every row from a model that never saw its problem, the fold of every row, the C chosen
    in each fold). The score is the fold model's decision function: features centred and scaled with the
    training fold's statistics, intercept kept; compare scores only within a fold (see the module
    docstring). A training fold with one class only gives its rows a constant."""
    X_NF, y_N, groups_N = np.asarray(X_NF, float), np.asarray(y_N, int), np.asarray(groups_N)
    folds_N = fold_of_rows(groups_N, n_splits)
    scores_N, chosen = np.zeros(len(y_N)), []
    for k in range(folds_N.max() + 1):
        test = folds_N == k
        y_tr, g_tr = y_N[~test], groups_N[~test]
        if len(set(y_tr.tolist())) < 2:
            continue
        c = choose_c(X_NF[~test], y_tr, g_tr, Cs, inner_splits)
        scores_N[test] = _fit(X_NF[~test], y_tr, c).decision_function(X_NF[test])
        chosen.append(c)
    return scores_N, folds_N, chosen


def block_permutation(y_N: np.ndarray, groups_N: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y_N`` with whole problems' label blocks shuffled among the problems that have as many rows: every
    problem's rows take, in order, the labels of another problem's rows."""
    y_N, groups_N = np.asarray(y_N), np.asarray(groups_N)
    rows = {g: np.flatnonzero(groups_N == g) for g in np.unique(groups_N)}
    out = y_N.copy()
    for size in sorted({len(r) for r in rows.values()}):
        same = [g for g, r in rows.items() if len(r) == size]
        for g, h in zip(same, rng.permutation(len(same)), strict=True):
            out[rows[g]] = y_N[rows[same[h]]]
    return out


def permutation_test(X_NF: np.ndarray, y_N: np.ndarray, groups_N: np.ndarray, observed: float,
                     n_permutations: int, seed: int = 0, n_splits: int = 5, Cs=DEFAULT_CS,
                     inner_splits: int = 3) -> dict:
    """The out-of-fold AUC under labels permuted by problem (:func:`block_permutation`), the whole
    cross-validation refitted each time: the one-sided p-value of ``observed`` (AUC above chance),
    (1 + #null >= observed) / (1 + n), and the null's median and 2.5/97.5 percentiles."""
    if n_permutations < 1:
        raise ValueError(f"a permutation test needs at least 1 permutation, got {n_permutations}")
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_permutations):
        y_p = block_permutation(y_N, groups_N, rng)
        scores_N, folds_N, _ = out_of_fold_scores(X_NF, y_p, groups_N, n_splits, Cs, inner_splits)
        null.append(stratified_auc(y_p, scores_N, folds_N))
    null_P = np.array(null)
    null_P = null_P[np.isfinite(null_P)]
    if not len(null_P):
        return {"n_permutations": n_permutations, "n_defined": 0, "p": None, "null_median": None,
                "null_lo": None, "null_hi": None}
    lo, mid, hi = np.percentile(null_P, [NULL_BAND[0], 50, NULL_BAND[1]])
    return {"n_permutations": n_permutations, "n_defined": len(null_P),
            "p": float((1 + (null_P >= observed - 1e-12).sum()) / (1 + len(null_P))),
            "null_median": float(mid), "null_lo": float(lo), "null_hi": float(hi)}


def feature_sets(t: dict) -> dict:
    """The feature sets probed, from 4.2's per-rollout tensors: the adapters (trace + last tokens, each
    alone), the thinking length, and the matched MLP neurons when 4.2 read them."""
    sets = {PROBE: np.hstack([t["lora_trace_RS"], t["lora_last_RS"]]),
            "adapters (last tokens)": t["lora_last_RS"].numpy(), "adapters (trace)": t["lora_trace_RS"].numpy(),
            "thinking length": t["think_tokens_R"].numpy()[:, None].astype(float)}
    if "mlp_trace_RS" in t:
        sets["MLP neurons (trace + last)"] = np.hstack([t["mlp_trace_RS"], t["mlp_last_RS"]])
    return sets


def verdict(auc: dict, vs: dict, perm: dict | None = None) -> str:
    """One plain sentence: is the probe above its permutation null, and does it beat every baseline (its CI
    of the difference above 0)?"""
    better = [n for n, d in vs.items() if d["lo"] is not None and d["lo"] > 0]
    worse_or_same = [n for n in vs if n not in better]
    p = auc[PROBE]
    head = f"probe AUC {p['value']:.3f}" if p["value"] is not None else "probe AUC undefined"
    if perm and perm.get("p") is not None and p["value"] is not None:
        head += f" (permutation p {perm['p']:.3f}; null 95% band [{perm['null_lo']:.3f}, {perm['null_hi']:.3f}]"
        head += ": above chance)" if perm["p"] <= 0.05 else \
            ": below the null, an artifact or a fluke, not a signal)" if p["value"] < perm["null_lo"] else \
            ": within chance)"
    elif p["lo"] is not None and p["lo"] <= 0.5 <= p["hi"]:
        head += " (its CI includes chance)"
    if worse_or_same:
        return f"{head}: no better than {', '.join(worse_or_same)} (the CI of the difference includes 0)"
    return f"{head}: better than {', '.join(better)} (CI of the difference above 0)"
