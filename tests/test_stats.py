import numpy as np
import pytest

from rank1.stats import Estimate, bootstrap_mean, bootstrap_means, paired_bootstrap, paired_recovery


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
