import numpy as np
import pytest

from rank1.stats import Estimate, bootstrap_mean, bootstrap_means, gain_measurable, paired_bootstrap, paired_recovery


def test_bootstrap_mean_of_constant_has_zero_width():
    e = bootstrap_mean(np.full(20, 0.25), n_resamples=200)
    assert (e.value, e.lo, e.hi, e.n) == (0.25, 0.25, 0.25, 20)


def test_bootstrap_mean_ci_matches_normal_theory():
    # 0/1 outcomes, p = 0.5, n = 400: the 95% interval is about +-1.96 * sqrt(.25 / 400) = +-0.049
    x = np.array([0, 1] * 200)
    e = bootstrap_mean(x, n_resamples=4000, seed=1)
    assert e.value == 0.5
    assert e.hi - e.value == pytest.approx(0.049, abs=0.006)
    assert e.value - e.lo == pytest.approx(0.049, abs=0.006)


def test_bootstrap_means_columns_agree_with_single():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    mean, lo, hi = bootstrap_means(x, n_resamples=3000)
    np.testing.assert_allclose(mean, x.mean(0))
    for k in range(3):
        e = bootstrap_mean(x[:, k], n_resamples=3000, seed=5)
        assert lo[k] == pytest.approx(e.lo, abs=0.06) and hi[k] == pytest.approx(e.hi, abs=0.06)


def test_paired_recovery_hand_computed_and_pairing():
    base = np.array([0, 0, 0, 0, 1.0])
    full = np.array([1, 1, 1, 0, 1.0])
    lora = np.array([1, 1, 0, 0, 1.0])
    e = paired_recovery(lora, base, full, n_resamples=2000)
    assert e.value == pytest.approx((0.6 - 0.2) / (0.8 - 0.2))
    assert e.lo <= e.value <= e.hi
    # resamples where full == base (only problems 4 and 5 drawn: (2/5)^5 = 1.02%) are undefined
    assert e.undefined_share == pytest.approx((2 / 5) ** 5, abs=0.005)
    # an adapter identical to the full model recovers exactly 1 in every defined resample
    same = paired_recovery(full, base, full, n_resamples=500)
    assert (same.value, same.lo, same.hi) == (1.0, 1.0, 1.0)


def test_recovery_undefined_when_full_equals_base():
    x = np.array([1.0, 0.0, 1.0])
    e = paired_recovery(x, x, x, n_resamples=100)
    assert e.value is None and e.undefined_share == 1.0
    assert format(e) == "undefined"
    assert format(Estimate(0.5, 0.25, 0.75), ".2f") == "0.50 [0.25, 0.75]"


def test_paired_bootstrap_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap({"a": np.zeros(3), "b": np.zeros(4)}, lambda a, b: 0.0)


# ---------------------------------------------------------------- shares, chi-square, enrichment, rank test


def test_class_shares_hand_computed():
    from rank1.stats import class_shares

    est = class_shares([0, 0, 1, 2], [0, 1, 2], n_resamples=500)
    assert [est[c].value for c in (0, 1, 2)] == [0.5, 0.25, 0.25] and est[0].n == 4
    const = class_shares(["a"] * 9, ["a", "b"], n_resamples=200)
    assert (const["a"].value, const["a"].lo, const["a"].hi) == (1.0, 1.0, 1.0)
    assert (const["b"].value, const["b"].lo, const["b"].hi) == (0.0, 0.0, 0.0)
    # share 0.3 of 500: 95% interval about +-1.96 sqrt(0.3 * 0.7 / 500) = +-0.040
    wide = class_shares([1] * 150 + [0] * 350, [1], n_resamples=4000, seed=3)[1]
    assert wide.hi - wide.value == pytest.approx(0.040, abs=0.006)
    assert wide.value - wide.lo == pytest.approx(0.040, abs=0.006)


def test_chi_square_hand_computed():
    from rank1.stats import chi_square

    # rows 10 / 10, columns 8 / 6 / 6: expected [4, 3, 3] per row;
    # chi2 = 2 * ((6-4)^2/4 + (2-3)^2/3 + (2-3)^2/3) = 2 + 4/3; with 2 dof, p = exp(-chi2 / 2)
    res = chi_square([[6, 2, 2], [2, 4, 4]])
    assert res["statistic"] == pytest.approx(2 + 4 / 3) and res["dof"] == 2
    assert res["p_value"] == pytest.approx(np.exp(-(2 + 4 / 3) / 2))
    assert res["expected"] == [[4, 3, 3], [4, 3, 3]]
    # the authors' committed table (LoRA 367 / MLP 376 features): about 20.3
    lora = np.round(np.array([0.161, 0.398, 0.441]) * 367)
    mlp = np.round(np.array([0.130, 0.266, 0.604]) * 376)
    assert chi_square([lora, mlp])["statistic"] == pytest.approx(20.3, abs=0.3)
    # an empty class is dropped (2 x 2 left, no continuity correction): chi2 = N (ad - bc)^2 / (row and column sums)
    res = chi_square([[6, 4, 0], [2, 8, 0]])
    assert res["dropped_columns"] == [2] and res["dof"] == 1
    assert res["statistic"] == pytest.approx(20 * (6 * 8 - 4 * 2) ** 2 / (10 * 10 * 8 * 12))
    assert chi_square([[0, 0, 3], [0, 0, 4]])["statistic"] is None


def test_enrichment_hand_computed():
    from rank1.stats import enrichment

    a = ["op", "op", "num", "other"]  # op 1/2, num 1/4
    b = ["op", "num", "num", "num"]  # op 1/4, num 3/4, other 0
    est = enrichment(a, b, ["op", "num", "other", "none"], n_resamples=2000)
    assert est["op"].value == pytest.approx(2.0) and est["num"].value == pytest.approx(1 / 3)
    assert est["other"].value is None and est["other"].undefined_share == 1.0  # b never has it
    assert est["none"].value is None
    assert est["op"].lo <= 2.0 <= est["op"].hi
    # b draws no "op" in (3/4)^4 of its resamples: those ratios are undefined
    assert est["op"].undefined_share == pytest.approx(0.75 ** 4, abs=0.03)
    same = enrichment(["x"] * 5, ["x"] * 7, ["x"], n_resamples=100)["x"]
    assert (same.value, same.lo, same.hi) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="two non-empty groups"):
        enrichment([], ["x"], ["x"])


def test_enrichment_ci_matches_the_delta_method():
    from rank1.stats import enrichment

    # shares 0.4 (n=1000) and 0.2 (n=1000): log ratio se = sqrt(0.6/(1000*0.4) + 0.8/(1000*0.2)) = 0.0742
    a = ["c"] * 400 + ["d"] * 600
    b = ["c"] * 200 + ["d"] * 800
    e = enrichment(a, b, ["c"], n_resamples=4000, seed=1)["c"]
    se = np.sqrt(0.6 / 400 + 0.8 / 200)
    assert e.value == pytest.approx(2.0)
    assert np.log(e.hi / e.value) == pytest.approx(1.96 * se, rel=0.1)
    assert np.log(e.value / e.lo) == pytest.approx(1.96 * se, rel=0.1)


def test_rank_test_hand_computed():
    from rank1.stats import rank_test

    # no overlap: U_a = 0; exact two-sided p = 2 / C(6, 3) = 0.1
    res = rank_test([1, 2, 3], [4, 5, 6])
    assert (res["u"], res["effect"], res["median_a"], res["median_b"]) == (0.0, 0.0, 2.0, 5.0)
    assert res["p_value"] == pytest.approx(0.1)
    # one tie (3 vs 3 counts 1/2): U_a = 0.5 + 1 (4 > 3) = 1.5 of 4 pairs
    res = rank_test([3, 4], [3, 5])
    assert res["u"] == 1.5 and res["effect"] == pytest.approx(1.5 / 4)
    assert rank_test([float("nan")], [1.0])["p_value"] is None


def test_sign_flip_min_p_and_units_needed_by_hand():
    from rank1.stats import sign_flip_min_p, sign_flip_test, sign_flip_units_needed

    assert sign_flip_min_p(6) == 2 / 2**6 == 0.03125  # all six of one sign: that pattern and its mirror
    assert sign_flip_test(np.ones((6, 1)))[0] == pytest.approx(0.03125)  # the test itself reaches it
    assert sign_flip_min_p(20, n_resamples=999) == pytest.approx(2 / 1000)  # random flips: the count's floor
    # one of 210 features passes BH at q = 0.05 only if p <= 0.05 / 210 = 2.38e-4: 2 / 2^n <= 2.38e-4 from n = 14
    assert sign_flip_min_p(13) > 0.05 / 210 >= sign_flip_min_p(14)
    assert sign_flip_units_needed(210, 0.05) == 14
    assert sign_flip_units_needed(210, 0.05, n_resamples=1000) is None  # 2 / 1001 never reaches 2.38e-4
    with pytest.raises(ValueError, match="0 < q < 1"):
        sign_flip_units_needed(10, 1.5)


def test_paired_difference_with_four_units_cannot_separate():
    from rank1.stats import paired_difference

    t = paired_difference(np.array([3.0, 2, 4, 5]), np.array([1.0, 1, 1, 1]), n_resamples=2000)
    assert t["mean_diff"] == 2.5 and t["units_positive"] == 4 and t["n_units"] == 4
    assert t["distinct_resamples"] == 35  # multisets of 4 from 4: C(7, 4)
    assert t["lo"] > 0  # the bootstrap CI is off 0 ...
    assert t["p_sign_flip"] == pytest.approx(2 / 16) == t["min_p_possible"]  # ... the exact test cannot say so
    assert not t["powered"] and not t["separated"]
    many = paired_difference(np.arange(8.0) + 1, np.zeros(8), n_resamples=2000)
    assert many["powered"] and many["separated"] and many["p_sign_flip"] == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="one length >= 2"):
        paired_difference(np.ones(3), np.ones(4))


def test_stratified_auc_compares_within_strata_only():
    from sklearn.metrics import roc_auc_score

    from rank1.stats import grouped_auc, stratified_auc

    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.2, 5.0, 5.1, 9.0, 8.0])  # strata 0 and 1 ranked right, stratum 2 wrong
    strata = np.array([0, 0, 1, 1, 2, 2])
    assert stratified_auc(y, s, strata) == pytest.approx(2 / 3)  # 1 + 1 + 0 over 3 within-stratum pairs
    assert stratified_auc(y, s) == roc_auc_score(y, s)
    # a constant added to one stratum changes the pooled AUC (5/6 -> 4/6 by hand) but not the stratified one
    y2, s2, strata2 = np.array([0, 0, 1, 0, 1]), np.array([0, 0.5, 1, 10, 11]), np.array([0, 0, 0, 1, 1])
    shifted = s2 - 20 * (strata2 == 1)
    assert (roc_auc_score(y2, s2), roc_auc_score(y2, shifted)) == pytest.approx((5 / 6, 4 / 6))
    assert stratified_auc(y2, s2, strata2) == stratified_auc(y2, shifted, strata2) == 1.0
    assert np.isnan(stratified_auc(np.array([0, 1]), np.array([0.0, 1.0]), np.array([0, 1])))
    est = grouped_auc(y, s, strata, 200, strata_N=strata)
    assert est.value == pytest.approx(2 / 3) and est.lo <= est.value <= est.hi


def test_proportion_ci_is_wilson_by_hand():
    from rank1.stats import proportion_ci

    # Wilson, k=5, n=10, z=1.96: centre (5 + z^2/2) / (10 + z^2) = 0.5, half-width z sqrt(10/4 + z^2/4) / (10 + z^2)
    z = 1.959964
    half = z * (10 / 4 + z * z / 4) ** 0.5 / (10 + z * z)
    est = proportion_ci(5, 10)
    assert est["value"] == 0.5 and est["lo"] == pytest.approx(0.5 - half, abs=1e-6)
    assert est["hi"] == pytest.approx(0.5 + half, abs=1e-6) and est["n"] == 10
    assert proportion_ci(0, 4)["lo"] == 0.0
    with pytest.raises(ValueError, match="0 <= k <= n and n > 0, got k=5, n=4"):
        proportion_ci(5, 4)


def test_a_gain_is_measurable_only_when_the_two_accuracy_cis_are_apart():
    base = {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert not gain_measurable({"value": 0.033, "lo": 0.0, "hi": 0.1}, base)  # touching at 0: overlap
    assert gain_measurable({"value": 0.1, "lo": 0.02, "hi": 0.2}, base)
    assert gain_measurable(base, {"value": 0.1, "lo": 0.02, "hi": 0.2})  # a loss apart from 0 too
    assert not gain_measurable({"value": 0.5, "lo": 0.3, "hi": 0.7}, {"value": 0.4, "lo": 0.2, "hi": 0.6})
