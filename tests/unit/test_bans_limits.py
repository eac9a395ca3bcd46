"""The shared ban and session tables (pure logic, one process)."""

from __future__ import annotations

from ftpd.bans import BanPolicy, BanTable, FailureTracker, normalize
from ftpd.limits import Limits, SessionTable


def test_failures_in_window_ban_and_expire():
    tracker = FailureTracker(BanTable())
    policy = BanPolicy(max_failures=3, window=60, ban_time=100)
    assert not tracker.failed("10.0.0.1", policy, now=0)
    assert not tracker.failed("10.0.0.1", policy, now=70)  # the first one left the window
    assert not tracker.failed("10.0.0.1", policy, now=80)
    assert tracker.failed("::ffff:10.0.0.1", policy, now=90)  # same address, mapped
    table = tracker.table
    assert table.banned_for("10.0.0.1", now=95) == 95.0
    assert table.banned_for("10.0.0.2", now=95) == 0.0
    assert table.banned_for("10.0.0.1", now=191) == 0.0
    assert not tracker.failed("10.0.0.9", BanPolicy(0, 60, 100), now=0)


def test_ban_table_full_of_live_bans_still_bans_newcomers():
    table = BanTable(capacity=16)
    for i in range(40):
        table.ban(f"10.1.0.{i}", 1000, now=0)
    assert table.banned_for("10.1.0.39", now=1) > 0


def test_normalize():
    assert normalize("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalize("2001:DB8::1") == "2001:db8::1"


def test_session_table_limits_and_slot_release():
    table = SessionTable(slots=4)
    table.slot = 0
    limits = Limits(max_sessions=3, per_ip=2, per_user=1)
    assert table.open_session("10.0.0.1", limits) is None
    assert table.open_session("10.0.0.1", limits) is None
    assert table.open_session("10.0.0.1", limits) == "too many sessions from your address"
    table.slot = 1
    assert table.open_session("10.0.0.2", limits) is None
    assert table.open_session("10.0.0.3", limits) == "too many sessions on this server"
    assert table.claim_user("alice", 1) and not table.claim_user("alice", 1)
    table.clear_slot(0)
    assert table.sessions() == 1
    assert table.open_session("10.0.0.1", limits) is None
    table.release_user("alice")
    assert table.claim_user("alice", 1)
