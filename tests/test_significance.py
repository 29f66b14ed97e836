import math

import pytest
from scipy import stats

from benchmark.significance import compare, summarize


def test_one_seed_takes_its_bootstrap_interval():
    summary = summarize([50.0], [2.0])
    assert (summary.mean, summary.n) == (50.0, 1) and math.isnan(summary.std)
    assert summary.high - 50.0 == pytest.approx(1.96 * 2.0, rel=1e-3)


def test_seeds_that_agree_by_chance_keep_the_bootstrap_noise():
    agreeing = summarize([50.0, 50.1, 49.9], [2.0, 2.0, 2.0])
    assert agreeing.std == pytest.approx(0.1)
    assert agreeing.high - agreeing.mean == pytest.approx(stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))
    spread = summarize([40.0, 50.0, 60.0], [2.0, 2.0, 2.0])
    assert spread.high - spread.mean == pytest.approx(stats.t.ppf(0.975, 2) * 10.0 / math.sqrt(3))


def test_single_seeds_are_compared_by_a_z_test():
    result = compare([54.0], [2.0], [50.0], [2.0])
    assert result.difference == 4.0
    assert result.p_value == pytest.approx(2 * stats.norm.sf(4.0 / math.sqrt(8.0)))
    assert result.verdict == "tie"
    assert compare([44.0], [1.0], [50.0], [1.0]).verdict == "lower"


def test_welch_over_seeds():
    better, reference = [30.0, 31.0, 29.0], [40.0, 42.0, 38.0]
    result = compare(better, [0.1] * 3, reference, [0.1] * 3)
    expected = stats.ttest_ind(better, reference, equal_var=False)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9) and result.verdict == "lower"
    assert compare(reference, [0.1] * 3, better, [0.1] * 3).verdict == "higher"
    assert compare([40.0, 41.0], [5.0, 5.0], [39.0, 40.0], [5.0, 5.0]).verdict == "tie"


def test_identical_rows_without_noise_tie():
    assert compare([0.0], [0.0], [0.0], [0.0]).verdict == "tie"
    with pytest.raises(ValueError):
        compare([], [], [1.0], [1.0])
