"""Stage 4.3 correctness probes and the power of the rollout test: scoring within folds, the permutation null, and
hand-computed power."""

import numpy as np
import pytest


def test_probe_finds_a_planted_signal_and_not_a_missing_one():
    from rank1.interventions.probes import out_of_fold_scores
    from rank1.stats import grouped_auc

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 6)
    y = rng.integers(0, 2, len(groups))
    X = rng.normal(size=(len(y), 10))
    X[:, 3] += 2.5 * y  # one informative feature
    scores, folds, chosen = out_of_fold_scores(X, y, groups, n_splits=5)
    assert grouped_auc(y, scores, groups, 200, strata_N=folds).lo > 0.7 and len(chosen) == 5
    assert sorted(np.bincount(folds)) == [24] * 5  # 20 problems of 6 rollouts in 5 folds, problems kept whole
    noise, folds, _ = out_of_fold_scores(rng.normal(size=X.shape), y, groups, n_splits=5)
    est = grouped_auc(y, noise, groups, 200, strata_N=folds)
    assert est.lo < 0.5 < est.hi
    with pytest.raises(ValueError, match="at least 2 problems"):
        out_of_fold_scores(X[:6], y[:6], groups[:6])


def _clustered_noise(seed: int, n_features: int = 50, mean: float = 5.0):
    """16 problems x 4 rollouts: grades clustered by problem (each has its own success rate), features with
    mean ``mean``, a problem effect and rollout noise, and no relation to the grades."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(16), 4)
    y = (rng.random(64) < rng.random(16)[groups]).astype(int)
    X = mean + rng.normal(size=(16, n_features))[groups] + rng.normal(size=(64, n_features))
    return X, y, groups


def test_probe_auc_on_noise_with_nonzero_means_is_centred_on_chance():
    """Each fold's model never saw its fold, and the grades are unrelated to the features, so the within-fold
    AUC has expectation 0.5 whatever the feature means and the fold offsets; over 30 seeds its mean stays
    near 0.5."""
    from rank1.interventions.probes import out_of_fold_scores
    from rank1.stats import stratified_auc

    aucs = []
    for seed in range(30):
        X, y, groups = _clustered_noise(seed)
        scores, folds, _ = out_of_fold_scores(X, y, groups, 5, (0.01, 0.1, 1.0), 3)
        aucs.append(stratified_auc(y, scores, folds))
    aucs = np.array(aucs)
    # 30 null AUCs of sd about 0.11 (measured): their mean is within 0.5 +- 0.06, 3 standard errors of 0.02
    assert 0.05 < aucs.std() < 0.2 and abs(aucs.mean() - 0.5) < 0.06


def test_probe_scores_do_not_depend_on_feature_offsets():
    from rank1.interventions.probes import out_of_fold_scores

    X, y, groups = _clustered_noise(3, n_features=8, mean=0.0)
    a, folds, _ = out_of_fold_scores(X, y, groups, 4, (0.1,), 3)
    b, _, _ = out_of_fold_scores(X + 5.0, y, groups, 4, (0.1,), 3)
    np.testing.assert_allclose(a, b, atol=1e-6)  # training-fold centring removes any constant


def test_block_permutation_moves_whole_problems():
    from rank1.interventions.probes import block_permutation

    y = np.array([1, 1, 0, 0, 1, 0, 1])
    groups = np.array([0, 0, 1, 1, 2, 2, 3])  # problems 0-2 have two rollouts, problem 3 one
    seen = set()
    for seed in range(20):
        out = block_permutation(y, groups, np.random.default_rng(seed))
        blocks = {tuple(out[groups == g]) for g in range(3)}
        assert blocks == {(1, 1), (0, 0), (1, 0)} and out[6] == 1  # blocks kept whole, the lone problem stays
        seen.add(tuple(out))
    assert len(seen) == 6  # all 3! orders of the three blocks occur


def test_permutation_test_separates_signal_from_noise():
    from rank1.interventions.probes import out_of_fold_scores, permutation_test
    from rank1.stats import stratified_auc

    X, y, groups = _clustered_noise(1, n_features=5)
    X[:, 0] += 3.0 * y
    scores, folds, _ = out_of_fold_scores(X, y, groups, 4, (1.0,), 3)
    auc = stratified_auc(y, scores, folds)
    res = permutation_test(X, y, groups, auc, 19, seed=0, n_splits=4, Cs=(1.0,))
    assert auc > res["null_hi"] and res["p"] == pytest.approx(1 / 20)  # the smallest p 19 permutations allow
    assert res["null_lo"] <= res["null_median"] <= res["null_hi"] and res["n_defined"] == 19
    Xn, _, _ = _clustered_noise(2, n_features=5)
    scores, folds, _ = out_of_fold_scores(Xn, y, groups, 4, (1.0,), 3)
    noise = permutation_test(Xn, y, groups, stratified_auc(y, scores, folds), 19, seed=0, n_splits=4, Cs=(1.0,))
    assert noise["p"] > 0.05
    with pytest.raises(ValueError, match="at least 1 permutation"):
        permutation_test(X, y, groups, 0.5, 0)


def test_rollout_power_by_hand():
    from rank1.interventions.rollouts import compare, power, power_text

    pw = power(6, 210, 0.05, 10_000)
    assert pw["min_p_possible"] == 2 / 2**6 == 0.03125 and pw["underpowered"]
    assert pw["problems_needed"] == 14  # 2 / 2^14 = 1.2e-4 <= 0.05 / 210 = 2.4e-4 < 2 / 2^13
    assert pw["features_needed_at_min_p"] == 132  # BH passes k features at p = 0.03125 once k >= 210 * 0.03125 / 0.05
    assert not power(14, 210, 0.05, 10_000)["underpowered"]
    d = np.ones((6, 3))
    res = compare(d, ["a", "b", "c"], 1000, alpha=0.05)
    assert res["min_p_possible"] == 0.03125 and res["bh_threshold_single"] == pytest.approx(0.05 / 3)
    assert res["underpowered"] and res["problems_needed"] == 7  # 2 / 2^7 = 0.0156 <= 0.0167 < 2 / 2^6
    assert "underpowered" in power_text(res) and "7 mixed problems needed" in power_text(res)
