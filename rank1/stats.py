"""Statistics every stage reports with: percentile bootstrap CIs, paired over shared units.

A "unit" is what was sampled (a problem, a sequence): resampling units with replacement and
recomputing the statistic gives its sampling spread. :func:`paired_bootstrap` resamples the same
units for every array, which is what a difference or a ratio of two variants measured on the same
problems needs (e.g. recovery = (lora - base) / (full - base)).

Class shares, the chi-square test of a contingency table, category enrichment (a ratio of shares of two
independent groups) and the Mann-Whitney rank test serve the autointerp comparison; the tests themselves
come from ``scipy.stats``.

Tests across many quantities: the sign-flip test of paired differences (``scipy.stats.permutation_test``),
Benjamini-Hochberg (``scipy.stats.false_discovery_control``), and the power bounds of the sign-flip test
(the smallest p it can reach on n units, the units a feature needs to pass BH), closed forms neither
library offers. :func:`stratified_auc` is a pair-weighted mean of ``sklearn.metrics.roc_auc_score`` over
strata: sklearn has no AUC restricted to within-stratum pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from math import comb

import numpy as np
from scipy.stats import binomtest, chi2_contingency, false_discovery_control, mannwhitneyu, permutation_test
from sklearn.metrics import roc_auc_score

from rank1.metrics import recovery

DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval. ``value`` is None where the statistic
    is undefined on the data itself; ``undefined_share`` is the share of resamples where it was."""

    value: float | None
    lo: float | None
    hi: float | None
    level: float = 0.95
    n: int = 0
    undefined_share: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __format__(self, spec: str) -> str:
        if self.value is None:
            return "undefined"
        spec = spec or ".3f"
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def proportion_ci(k: int, n: int, level: float = 0.95) -> dict:
    """The share ``k / n`` with its Wilson score interval (``scipy.stats.binomtest``), as an :class:`Estimate`
    dict; for a count with no resampling unit of its own (alive latents of one SAE, latents as units)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high), level, n).to_dict()


def gain_measurable(full: dict, base: dict) -> bool:
    """Whether a finetune's gain over its base is measurable: the two accuracy CIs (:class:`Estimate` dicts)
    are apart. Where they overlap, a recovery (variant - base) / (full - base) divides by a gain that may be
    0, so neither its value nor its CI is read (the tables print n/a, the report's verdict is n/a)."""
    return full["lo"] > base["hi"] or base["lo"] > full["hi"]


def _as_float(x) -> float:
    return float("nan") if x is None else float(x)


def paired_bootstrap(arrays: Mapping[str, np.ndarray], statistic: Callable[..., float | None],
                     n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> Estimate:
    """``statistic(**arrays)`` with a percentile CI from resampling the shared first axis.

    Every array has one row per unit (same length); each resample draws the same unit indices for
    all of them. A statistic returning None or NaN is undefined (e.g. a ratio with a zero
    denominator): the CI is taken over the defined resamples and the undefined share is reported.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"paired arrays need one length, got {({k: len(v) for k, v in arrays.items()})}")
    (n,) = lengths
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    point = _as_float(statistic(**arrays))
    rng = np.random.default_rng(seed)
    idx_RN = rng.integers(0, n, size=(n_resamples, n))
    reps = np.array([_as_float(statistic(**{k: v[idx] for k, v in arrays.items()})) for idx in idx_RN])
    defined = reps[np.isfinite(reps)]
    undefined = 1.0 - len(defined) / n_resamples
    if not np.isfinite(point):
        return Estimate(None, None, None, level, n, undefined)
    if len(defined) == 0:
        return Estimate(point, None, None, level, n, undefined)
    lo, hi = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(point, float(lo), float(hi), level, n, undefined)


def bootstrap_mean(x_N: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                   seed: int = 0) -> Estimate:
    """Mean of ``x_N`` with a percentile bootstrap CI over its units (vectorised)."""
    x_N = np.asarray(x_N, dtype=np.float64)
    if x_N.ndim != 1 or len(x_N) == 0:
        raise ValueError(f"bootstrap_mean needs a non-empty 1-d array, got shape {x_N.shape}")
    rng = np.random.default_rng(seed)
    means_R = x_N[rng.integers(0, len(x_N), size=(n_resamples, len(x_N)))].mean(axis=1)
    lo, hi = np.quantile(means_R, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(x_N.mean()), float(lo), float(hi), level, len(x_N))


def bootstrap_means(x_NK: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means of ``x_NK`` (N units x K quantities) with paired percentile CIs, vectorised:
    returns (mean_K, lo_K, hi_K). Units are resampled jointly for all columns. Memory is
    bounded by resampling in chunks."""
    x_NK = np.asarray(x_NK, dtype=np.float64)
    if x_NK.ndim != 2 or len(x_NK) == 0:
        raise ValueError(f"bootstrap_means needs a non-empty 2-d array, got shape {x_NK.shape}")
    n, k = x_NK.shape
    rng = np.random.default_rng(seed)
    out_RK = np.empty((n_resamples, k))
    chunk = max(1, min(n_resamples, 2**24 // max(1, n * k)))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out_RK[start:stop] = x_NK[idx].mean(axis=1)
    lo_K, hi_K = np.quantile(out_RK, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return x_NK.mean(axis=0), lo_K, hi_K


def paired_recovery(variant_N: np.ndarray, base_N: np.ndarray, full_N: np.ndarray,
                    n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> Estimate:
    """:func:`rank1.metrics.recovery` of the full finetune's gain with a problem-paired bootstrap CI
    (units: problems)."""
    return paired_bootstrap({"variant": variant_N, "base": base_N, "full": full_N}, recovery,
                            n_resamples, level, seed)


# ---------------------------------------------------------------- shares, contingency tables, enrichment


def class_shares(labels_N, classes, n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                 seed: int = 0) -> dict:
    """Share of each class among ``labels_N`` with percentile bootstrap CIs (units: the labelled items,
    resampled jointly for all classes). Returns {class: Estimate}."""
    labels_N = np.asarray(labels_N, dtype=object)
    if len(labels_N) == 0:
        return {c: Estimate(None, None, None, level, 0, 1.0) for c in classes}
    onehot_NC = np.stack([labels_N == c for c in classes], axis=1).astype(np.float64)
    mean_C, lo_C, hi_C = bootstrap_means(onehot_NC, n_resamples, level, seed)
    return {c: Estimate(float(m), float(lo), float(hi), level, len(labels_N))
            for c, m, lo, hi in zip(classes, mean_C, lo_C, hi_C, strict=True)}


def chi_square(table_RC) -> dict:
    """Pearson chi-square test of independence on a contingency table (rows: groups, columns: classes), via
    ``scipy.stats.chi2_contingency`` without continuity correction. Columns that are empty in every row are
    dropped first (they have no expected count) and listed in ``dropped_columns``."""
    table_RC = np.asarray(table_RC, dtype=np.float64)
    keep = table_RC.sum(axis=0) > 0
    kept = table_RC[:, keep]
    dropped = [int(i) for i in np.flatnonzero(~keep)]
    if kept.shape[1] < 2 or (kept.sum(axis=1) == 0).any():
        return {"statistic": None, "p_value": None, "dof": 0, "expected": None, "dropped_columns": dropped}
    res = chi2_contingency(kept, correction=False)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "dof": int(res.dof),
            "expected": res.expected_freq.tolist(), "dropped_columns": dropped}


def enrichment(a_N, b_M, categories, n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
               seed: int = 0) -> dict:
    """Enrichment of each category in group a over group b: (share of the category among a) / (share among
    b), with a percentile CI from resampling each group independently (two unpaired samples). The ratio is
    undefined (None) where b has none of the category; resamples where it is undefined are left out of the
    CI and counted in ``undefined_share``. Returns {category: Estimate}."""
    a_N, b_M = np.asarray(a_N, dtype=object), np.asarray(b_M, dtype=object)
    if len(a_N) == 0 or len(b_M) == 0:
        raise ValueError(f"enrichment needs two non-empty groups, got {len(a_N)} and {len(b_M)} items")
    rng = np.random.default_rng(seed)
    codes = {c: i for i, c in enumerate(categories)}
    a_code = np.array([codes.get(x, -1) for x in a_N])
    b_code = np.array([codes.get(x, -1) for x in b_M])
    C = len(categories)
    share_a_RC, share_b_RC = np.empty((n_resamples, C)), np.empty((n_resamples, C))
    chunk = max(1, 2**22 // max(len(a_N), len(b_M)))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        ra = a_code[rng.integers(0, len(a_N), size=(stop - start, len(a_N)))]
        rb = b_code[rng.integers(0, len(b_M), size=(stop - start, len(b_M)))]
        for c in range(C):
            share_a_RC[start:stop, c] = (ra == c).mean(axis=1)
            share_b_RC[start:stop, c] = (rb == c).mean(axis=1)
    out = {}
    for c, name in enumerate(categories):
        pa, pb = float((a_code == c).mean()), float((b_code == c).mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = share_a_RC[:, c] / share_b_RC[:, c]
        defined = reps[np.isfinite(reps)]
        undefined = 1.0 - len(defined) / n_resamples
        if pb == 0:
            out[name] = Estimate(None, None, None, level, len(a_N) + len(b_M), undefined)
            continue
        lo, hi = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2]) if len(defined) else (None, None)
        out[name] = Estimate(pa / pb, None if lo is None else float(lo), None if hi is None else float(hi), level,
                             len(a_N) + len(b_M), undefined)
    return out


def rank_test(a_N, b_M) -> dict:
    """Two-sided Mann-Whitney U test of a vs b (``scipy.stats.mannwhitneyu``) with the common-language
    effect size P(a > b) + P(a = b) / 2 = U_a / (n_a n_b), and both medians. NaNs are dropped."""
    a_N = np.asarray(a_N, dtype=np.float64)
    b_M = np.asarray(b_M, dtype=np.float64)
    a_N, b_M = a_N[np.isfinite(a_N)], b_M[np.isfinite(b_M)]
    if len(a_N) == 0 or len(b_M) == 0:
        return {"u": None, "p_value": None, "effect": None, "n_a": len(a_N), "n_b": len(b_M),
                "median_a": None, "median_b": None}
    res = mannwhitneyu(a_N, b_M, alternative="two-sided")
    return {"u": float(res.statistic), "p_value": float(res.pvalue),
            "effect": float(res.statistic / (len(a_N) * len(b_M))), "n_a": len(a_N), "n_b": len(b_M),
            "median_a": float(np.median(a_N)), "median_b": float(np.median(b_M))}

# ---------------------------------------------------------------- tests across many quantities


def sign_flip_test(d_NK: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Two-sided p-value per column of paired differences ``d_NK`` (N units x K quantities) that their
    mean is 0: the null makes each unit's difference symmetric about 0, so signs are flipped per unit
    (``scipy.stats.permutation_test`` with one sample; exact when 2^N <= ``n_resamples``)."""
    d_NK = np.asarray(d_NK, dtype=np.float64)
    if d_NK.ndim != 2 or len(d_NK) < 2:
        raise ValueError(f"sign_flip_test needs at least 2 units x K quantities, got shape {d_NK.shape}")
    res = permutation_test((d_NK,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=n_resamples, alternative="two-sided", axis=0,
                           rng=np.random.default_rng(seed))
    return np.atleast_1d(res.pvalue)


def sign_flip_min_p(n_units: int, n_resamples: int = DEFAULT_RESAMPLES) -> float:
    """The smallest two-sided p-value :func:`sign_flip_test` can return on ``n_units`` units: every unit's
    difference of one sign leaves only that pattern and its mirror image as extreme, 2 / 2^n when all 2^n
    sign patterns are enumerated; with ``n_resamples`` random flips instead (2^n > ``n_resamples``), scipy
    counts the observed pattern among the flips, so no p falls below 2 / (``n_resamples`` + 1)."""
    if n_units < 1:
        raise ValueError(f"a sign-flip test needs at least 1 unit, got {n_units}")
    exact = 2.0 / 2.0 ** n_units
    return min(1.0, exact if 2 ** n_units <= n_resamples else max(exact, 2.0 / (n_resamples + 1)))


def sign_flip_units_needed(n_tests: int, q: float, n_resamples: int = DEFAULT_RESAMPLES) -> int | None:
    """The fewest units at which a single feature (all its differences of one sign) can pass
    Benjamini-Hochberg at level ``q`` among ``n_tests`` features: its p must reach q / n_tests; None when
    ``n_resamples`` random flips cannot resolve a p that small at any number of units."""
    if n_tests < 1 or not 0 < q < 1:
        raise ValueError(f"need n_tests >= 1 and 0 < q < 1, got {n_tests} and {q}")
    target = q / n_tests
    if 2.0 / (n_resamples + 1) > target:
        return None
    n = 1
    while sign_flip_min_p(n, n_resamples) > target:
        n += 1
    return n


def paired_difference(a_N: np.ndarray, b_N: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Is the mean of ``a_N`` above the mean of ``b_N`` measured on the same units? The mean paired difference
    with a percentile bootstrap CI over units, the two-sided sign-flip p-value (:func:`sign_flip_test`), the
    smallest p the test can reach here, and how many distinct bootstrap resamples ``n`` units have
    (multisets of size n from n: C(2n - 1, n); 35 for 4 units). ``separated``: the CI excludes 0 and the
    sign-flip p is at most 1 - ``level`` (a few units can give a bootstrap CI off 0 that the exact test cannot
    confirm); ``powered``: the test can reach p <= 1 - ``level`` at all on this many units."""
    a_N, b_N = np.asarray(a_N, dtype=np.float64), np.asarray(b_N, dtype=np.float64)
    if a_N.shape != b_N.shape or a_N.ndim != 1 or len(a_N) < 2:
        raise ValueError(f"paired_difference needs two 1-d arrays of one length >= 2, got {a_N.shape}, {b_N.shape}")
    d_N = a_N - b_N
    est = bootstrap_mean(d_N, n_resamples, level, seed)
    n, alpha = len(d_N), 1 - level
    p = float(sign_flip_test(d_N[:, None], n_resamples, seed)[0])
    min_p = sign_flip_min_p(n, n_resamples)
    return {"mean_diff": est.value, "lo": est.lo, "hi": est.hi, "level": level, "n_units": n, "p_sign_flip": p,
            "min_p_possible": min_p, "powered": bool(min_p <= alpha + 1e-12), "distinct_resamples": comb(2 * n - 1, n),
            "units_positive": int((d_N > 0).sum()),
            "separated": bool((est.lo > 0 or est.hi < 0) and p <= alpha + 1e-12)}


def fdr_bh(p_K: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``)."""
    return false_discovery_control(np.asarray(p_K, dtype=np.float64), method="bh")


def stratified_auc(y_N: np.ndarray, score_N: np.ndarray, strata_N: np.ndarray | None = None) -> float:
    """ROC-AUC counting only the (positive, negative) pairs within one stratum: the pair-weighted mean of the
    strata's AUCs, sum_s AUC_s n1_s n0_s / sum_s n1_s n0_s. Out-of-fold scores come from one model per fold,
    and a fold's model shifts all its scores by an offset of its own (its intercept, its training means);
    comparing scores only within a fold (``strata_N`` = the fold of each row) cancels that offset. Without
    strata, the plain AUC. NaN when no stratum holds both classes."""
    y_N, score_N = np.asarray(y_N), np.asarray(score_N, dtype=np.float64)
    strata_N = np.zeros(len(y_N), dtype=int) if strata_N is None else np.asarray(strata_N)
    total, pairs = 0.0, 0
    for s in np.unique(strata_N):
        m = strata_N == s
        n1 = int(y_N[m].sum())
        n0 = int(m.sum()) - n1
        if n1 and n0:
            total += roc_auc_score(y_N[m], score_N[m]) * n1 * n0
            pairs += n1 * n0
    return total / pairs if pairs else float("nan")


def grouped_auc(y_N: np.ndarray, score_N: np.ndarray, groups_N: np.ndarray, n_resamples: int = 2000,
                level: float = 0.95, seed: int = 0, baseline_N: np.ndarray | None = None,
                strata_N: np.ndarray | None = None) -> Estimate:
    """ROC-AUC of ``score_N`` for labels ``y_N`` (pairs compared within ``strata_N`` only, when given: see
    :func:`stratified_auc`; minus the AUC of ``baseline_N`` on the same rows, if given) with a percentile CI
    from resampling groups (problems) with replacement; a resample with no pair of both classes is
    undefined (its share is reported). The CI holds the fitted models fixed; the permutation null of
    :mod:`rank1.interventions.probes` refits them."""
    y_N, score_N, groups_N = map(np.asarray, (y_N, score_N, groups_N))
    strata_N = np.zeros(len(y_N), dtype=int) if strata_N is None else np.asarray(strata_N)

    def stat(idx):
        auc = stratified_auc(y_N[idx], score_N[idx], strata_N[idx])
        if baseline_N is None or not np.isfinite(auc):
            return auc
        return auc - stratified_auc(y_N[idx], np.asarray(baseline_N)[idx], strata_N[idx])

    uniq = np.unique(groups_N)
    rows = [np.flatnonzero(groups_N == g) for g in uniq]
    point = stat(np.arange(len(y_N)))
    if not np.isfinite(point):
        return Estimate(None, None, None, level, len(uniq), 1.0)
    rng = np.random.default_rng(seed)
    reps = np.array([stat(np.concatenate([rows[i] for i in rng.integers(0, len(uniq), len(uniq))]))
                     for _ in range(n_resamples)])
    defined = reps[np.isfinite(reps)]
    if not len(defined):
        return Estimate(float(point), None, None, level, len(uniq), 1.0)
    lo, hi = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(point), float(lo), float(hi), level, len(uniq), 1.0 - len(defined) / n_resamples)
