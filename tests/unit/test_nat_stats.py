"""The periodic data_channel_stats event: deltas, silence when nothing happened."""

from __future__ import annotations

import collections
import logging
from typing import Any

from ftpd.datachannel import DATA_COUNTERS, StatsReporter


class Loop:
    def __init__(self) -> None:
        self.every: list[tuple[float, Any]] = []

    def call_every(self, seconds: float, fn: Any) -> None:
        self.every.append((seconds, fn))


def test_reports_deltas_only_when_something_happened(caplog) -> None:
    counters: collections.Counter[str] = collections.Counter()
    loop = Loop()
    reporter = StatsReporter(counters, loop, 60, worker=3)
    reporter.start()
    assert loop.every == [(60, reporter.report)]
    caplog.set_level(logging.INFO, logger="ftpd.events")

    reporter.report()
    assert caplog.records == []  # nothing happened: nothing logged

    counters.update({"pasv": 3, "epsv": 5, "425_timeout": 1, "425_range_exhausted": 2,
                     "login_failed": 7})
    reporter.report()
    [record] = caplog.records
    assert record.getMessage() == ("data connections in the last 60 s: 3 PASV, 5 EPSV, "
                                   "0 PORT, 0 EPRT; 425: 1 timeout, 2 range exhausted")
    fields = record.ftp_fields  # type: ignore[attr-defined]
    assert record.ftp_event == "data_channel_stats"  # type: ignore[attr-defined]
    assert fields["worker"] == 3 and fields["pasv"] == 3 and fields["425_foreign_address"] == 0
    assert "login_failed" not in fields and set(DATA_COUNTERS) <= set(fields)

    caplog.clear()
    counters["port"] += 1
    reporter.report()
    [record] = caplog.records
    assert record.ftp_fields["pasv"] == 0 and record.ftp_fields["port"] == 1  # type: ignore[attr-defined]


def test_interval_zero_never_reports() -> None:
    loop = Loop()
    StatsReporter(collections.Counter(), loop, 0, worker=0).start()
    assert loop.every == []
