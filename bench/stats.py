"""Small statistics helpers shared by the load generator and the report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def median(values: Iterable[float]) -> float | None:
    """Median, or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100): the smallest value with at least pct% at or below.

    Nearest rank never interpolates, so p99 of 200 samples is the 198th smallest:
    a real observed latency.
    """
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile out of range: {pct}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p99/max in milliseconds plus the sample count."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "n": len(values_s),
        "p50_ms": ms(percentile(values_s, 50)),
        "p99_ms": ms(percentile(values_s, 99)),
        "max_ms": ms(max(values_s) if values_s else None),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def best(values: Iterable[float | None], higher_is_better: bool) -> float | None:
    """Best of the known values (max or min), or None if none is known."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return max(known) if higher_is_better else min(known)


def aggregate_storms(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several login storms as one: medians of time-to-all and p99, sums of the counts.

    A storm in which someone never logged in counts as infinitely slow; if that is the
    median, time-to-all is None (not everyone got in).
    """
    if not runs:
        return {"runs": []}
    times = [r.get("all_logged_in_s") for r in runs]
    middle = median(math.inf if t is None else float(t) for t in times)
    p99s = [r["login"]["p99_ms"] for r in runs if r.get("login", {}).get("p99_ms") is not None]
    return {
        "clients": runs[0].get("clients"),
        "all_logged_in_s": None if middle is None or math.isinf(middle) else middle,
        "login": {"p99_ms": median(p99s)},
        "retries": sum(int(r.get("retries", 0)) for r in runs),
        "errors": sum(int(r.get("errors", 0)) for r in runs),
        "loadgen_cpu_share": max(float(r.get("loadgen_cpu_share", 0.0)) for r in runs),
        "runs": list(runs),
    }
