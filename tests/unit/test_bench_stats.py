"""Statistics of the benchmark: medians, nearest-rank percentiles, ratios, storm medians."""

from __future__ import annotations

import pytest

from bench.stats import aggregate_storms, best, latency_summary, median, percentile, ratio


def test_median() -> None:
    assert median([]) is None
    assert median([3.0]) == 3.0
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 201)]  # 1..200
    assert percentile(values, 50) == 100.0
    assert percentile(values, 99) == 198.0
    assert percentile(values, 100) == 200.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_summary_in_ms() -> None:
    summary = latency_summary([0.001, 0.002, 0.010])
    assert summary == {"n": 3, "p50_ms": 2.0, "p99_ms": 10.0, "max_ms": 10.0}
    assert latency_summary([])["p99_ms"] is None


def test_ratio_and_best() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
    assert best([1.0, None, 3.0], higher_is_better=True) == 3.0
    assert best([1.0, None, 3.0], higher_is_better=False) == 1.0
    assert best([None], higher_is_better=True) is None


def _storm(all_in: float | None, p99: float, retries: int = 0, errors: int = 0) -> dict:  # type: ignore[type-arg]
    return {"clients": 300, "all_logged_in_s": all_in, "login": {"p99_ms": p99},
            "retries": retries, "errors": errors, "loadgen_cpu_share": 0.1}


def test_aggregate_storms_takes_medians_and_sums() -> None:
    agg = aggregate_storms([_storm(2.0, 1900, 1), _storm(20.0, 11000, 100), _storm(3.0, 2900)])
    assert agg["all_logged_in_s"] == 3.0
    assert agg["login"]["p99_ms"] == 2900
    assert agg["retries"] == 101
    assert len(agg["runs"]) == 3


def test_a_storm_that_never_finished_counts_as_slowest() -> None:
    agg = aggregate_storms([_storm(None, 1), _storm(None, 1), _storm(2.0, 1)])
    assert agg["all_logged_in_s"] is None
    agg = aggregate_storms([_storm(None, 1), _storm(1.0, 1), _storm(2.0, 1)])
    assert agg["all_logged_in_s"] == 2.0
    assert aggregate_storms([]) == {"runs": []}
