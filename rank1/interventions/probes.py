"""Correctness probes: can a rollout's adapter activations predict whether its answer is right?

Logistic regression (standardised features) scored out of fold, as a score without the fold's intercept
(see :func:`out_of_fold_scores`): the outer split is ``GroupKFold`` by problem, so a problem's rollouts
are never both trained and scored on; the L2 strength ``C`` is chosen inside each outer training fold by
a grouped inner cross-validation (``GridSearchCV`` on ROC-AUC). The out-of-fold scores give one ROC-AUC
per feature set, with a CI from resampling problems (:func:`rank1.stats.grouped_auc`). Baselines go
through the same procedure: the rollout's thinking length alone, and the matched base-model MLP neurons;
the majority class scores a constant (AUC 0.5).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
PROBE = "adapters (trace + last)"  # the probe every baseline is compared with


def out_of_fold_scores(X_NF: np.ndarray, y_N: np.ndarray, groups_N: np.ndarray, n_splits: int = 5,
                       Cs=DEFAULT_CS, inner_splits: int = 3) -> tuple[np.ndarray, list[float]]:
    """(a score for every row from a model that never saw its problem, the C chosen in each fold).

    The score is ``w . (x / sd_train)``: the fold's weights on the scaled features, without the
    intercept and without the training mean. Scores of different folds are pooled into one AUC, and an
    intercept or a centring learned on the other problems shifts a whole fold by the training
    folds' base rate, which is anticorrelated with the held-out fold's (when one fold holds the easy
    problems, the rest hold the hard ones): pooled probabilities then score below chance even on pure
    noise. A training fold with one class only gives its rows a constant."""
    X_NF, y_N, groups_N = np.asarray(X_NF, float), np.asarray(y_N, int), np.asarray(groups_N)
    n_groups = len(np.unique(groups_N))
    if n_groups < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 problems, got {n_groups}")
    scores, chosen = np.full(len(y_N), np.nan), []
    for train, test in GroupKFold(n_splits=min(n_splits, n_groups)).split(X_NF, y_N, groups_N):
        y_tr, g_tr = y_N[train], groups_N[train]
        if len(set(y_tr.tolist())) < 2:
            scores[test] = 0.0
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        n_inner = min(inner_splits, len(np.unique(g_tr)))
        if n_inner >= 2:
            search = GridSearchCV(model, {"logisticregression__C": list(Cs)}, scoring="roc_auc",
                                  cv=GroupKFold(n_splits=n_inner), error_score=np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning, RuntimeWarning))
                search.fit(X_NF[train], y_tr, groups=g_tr)
            model, c = search.best_estimator_, search.best_params_["logisticregression__C"]
        else:
            c = 1.0
            model.set_params(logisticregression__C=c).fit(X_NF[train], y_tr)
        scaler, lr = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
        scores[test] = (X_NF[test] / scaler.scale_) @ lr.coef_[0]
        chosen.append(float(c))
    return scores, chosen


def feature_sets(t: dict) -> dict:
    """The feature sets probed, from 4.2's per-rollout tensors: the adapters (trace + last tokens, each
    alone), the thinking length, and the matched MLP neurons when 4.2 read them."""
    sets = {PROBE: np.hstack([t["lora_trace_RS"], t["lora_last_RS"]]),
            "adapters (last tokens)": t["lora_last_RS"].numpy(), "adapters (trace)": t["lora_trace_RS"].numpy(),
            "thinking length": t["think_tokens_R"].numpy()[:, None].astype(float)}
    if "mlp_trace_RS" in t:
        sets["MLP neurons (trace + last)"] = np.hstack([t["mlp_trace_RS"], t["mlp_last_RS"]])
    return sets


def verdict(auc: dict, vs: dict) -> str:
    """One plain sentence: does the probe beat every baseline (its CI of the difference above 0)?"""
    better = [n for n, d in vs.items() if d["lo"] is not None and d["lo"] > 0]
    worse_or_same = [n for n in vs if n not in better]
    p = auc[PROBE]
    head = f"probe AUC {p['value']:.3f}" if p["value"] is not None else "probe AUC undefined"
    if p["lo"] is not None and p["hi"] < 0.5:
        head += " (below chance out of fold: its CI lies under 0.5)"
    elif p["lo"] is not None and p["lo"] <= 0.5:
        head += " (its CI includes chance)"
    if worse_or_same:
        return f"{head}: no better than {', '.join(worse_or_same)} (the CI of the difference includes 0)"
    return f"{head}: better than {', '.join(better)} (CI of the difference above 0)"
