"""Student's t quantiles and the summary of a group's figures, against published values."""

import math
import statistics

import pytest

from swsl_cli.runner.statistics import difference, summarize, t_quantile, t_two_sided_probability


@pytest.mark.parametrize(
    "df, t",
    [
        (1, 12.7062),
        (2, 4.3027),
        (3, 3.1824),
        (4, 2.7764),
        (9, 2.2622),
        (10, 2.2281),
        (29, 2.0452),
        (30, 2.0423),
        (60, 2.0003),
        (120, 1.9799),
        (100_000, 1.9600),
    ],
)
def test_the_t_quantile_of_a_95_percent_interval_matches_the_tables(df, t):
    assert t_quantile(df) == pytest.approx(t, abs=5e-5)


def test_the_probability_is_exact_for_odd_and_even_degrees_of_freedom():
    # df 1 is the Cauchy distribution, df 2 has a closed form: t / sqrt(2 + t^2).
    assert t_two_sided_probability(1.0, 1) == pytest.approx(0.5)
    assert t_two_sided_probability(3.0, 2) == pytest.approx(3 / math.sqrt(11))
    assert t_two_sided_probability(0.0, 7) == 0.0
    assert t_quantile(5, confidence=0.99) == pytest.approx(4.0321, abs=5e-5)
    with pytest.raises(ValueError, match="df=0"):
        t_two_sided_probability(1.0, 0)


def test_summary_mean_sd_and_interval():
    values = [0.990, 0.992, 0.991, 0.995]
    summary = summarize(values)
    assert summary.n == 4 and summary.mean == pytest.approx(statistics.mean(values))
    assert summary.sd == pytest.approx(statistics.stdev(values))
    half = 3.182446 * statistics.stdev(values) / 2
    assert (summary.low, summary.high) == pytest.approx((summary.mean - half, summary.mean + half))
    assert summarize([0.5]) == summarize([0.5]) and summarize([0.5]).sd is None
    assert summarize([]) is None


def test_welch_difference_of_two_groups_matches_its_formula():
    a = summarize([0.90, 0.92, 0.91, 0.95, 0.93])
    b = summarize([0.78, 0.86, 0.83, 0.81, 0.85])
    d = difference(a, b)
    se = math.sqrt(
        statistics.variance([0.90, 0.92, 0.91, 0.95, 0.93]) / 5
        + statistics.variance([0.78, 0.86, 0.83, 0.81, 0.85]) / 5
    )
    assert d.mean == pytest.approx(a.mean - b.mean) and d.sd == pytest.approx(se)
    # Welch-Satterthwaite gives 6.5 degrees of freedom here, rounded down to 6: t = 2.447.
    assert d.high - d.mean == pytest.approx(2.446912 * se, rel=1e-5)
    assert d.low > 0  # these two groups differ


def test_a_difference_needs_a_spread_on_both_sides():
    assert difference(summarize([0.9]), summarize([0.8, 0.85])) is None
    same = difference(summarize([0.9, 0.9]), summarize([0.8, 0.8]))
    assert same.mean == pytest.approx(0.1) and same.low == same.high == same.mean
