"""bench/RESULTS.md: ratios to the best peer and the pass/fail targets, from fake results."""

from __future__ import annotations

from typing import Any

from bench.profiles import FULL, QUICK
from bench.report import capacity, evaluate_targets, pss_mib, render


def _hold(pss_at: dict[int, float], fail_at: int | None = None) -> list[dict[str, Any]]:
    records, errors = [], 0
    for step, mib in pss_at.items():
        held = step
        if fail_at is not None and step >= fail_at:
            errors, held = errors + 3, step - 3
        records.append({"step": step, "held": held, "total_errors": errors,
                        "server_pss_kib": mib * 1024})
        if errors:
            break
    return records


def _server(retr: float, stor: float, rate200: float, storm: float | None, pss1000: float,
            steps: tuple[int, ...] = (0, 200, 1000), fail_at: int | None = None) -> dict[str, Any]:
    pss = {s: (pss1000 * s / 1000 if s else 2.0) for s in steps}
    pss[1000] = pss1000
    return {
        "version": "1", "notes": ["n"], "errors": [],
        "throughput": {"retr_mb_s": 2000.0, "bare_retr_mb_s": 2000.0, "retr_ratio": retr,
                       "stor_mb_s": 900.0, "bare_stor_mb_s": 900.0, "stor_ratio": stor},
        "sessions": {"50": {"sessions_per_s": rate200 / 2, "login": {"p50_ms": 1.0,
                                                                     "p99_ms": 2.0},
                            "session": {"p50_ms": 3.0, "p99_ms": 4.0}, "errors": 0},
                     "200": {"sessions_per_s": rate200, "login": {"p50_ms": 1.0, "p99_ms": 2.0},
                             "session": {"p50_ms": 3.0, "p99_ms": 4.0}, "errors": 0}},
        "storm": {"all_logged_in_s": storm, "login": {"p99_ms": 100.0}, "retries": 0,
                  "errors": 0},
        "hold": _hold(dict(sorted(pss.items())), fail_at),
    }


def _results(ftpd: dict[str, Any] | None, profile: Any = FULL) -> dict[str, Any]:
    steps = profile.hold_steps()
    servers = {
        "vsftpd": _server(0.94, 1.0, 100.0, 2.0, 390.0, tuple(steps)),
        "proftpd": _server(0.90, 0.8, 80.0, None, 900.0, tuple(steps)),
    }
    if ftpd is not None:
        servers = {"ftpd": ftpd, **servers}
    return {"meta": {"profile": profile.as_dict(), "machine": {"cpu": "test"},
                     "retry_policy": "p"}, "servers": servers}


def test_all_targets_pass() -> None:
    ftpd = _server(0.97, 1.01, 160.0, 0.2, 38.0, tuple(FULL.hold_steps()))
    statuses = [s for _, s, _ in evaluate_targets(_results(ftpd))]
    assert statuses == ["PASS"] * 6 + ["n/a"] * 2  # no "ftps" or "kdf" result here
    ftpd["ftps"] = {"retr_mb_s": 900.0, "bare_retr_mb_s": 2000.0, "retr_ratio": 0.45}
    ftpd["kdf"] = {"ftpd_scheme": "$scrypt$ln=15,r=8,p=1", "ftpd_ms": 120.0,
                   "sha512_crypt_ms": 5.0, "ratio": 24.0}
    results = _results(ftpd)
    results["servers"]["vsftpd"]["ftps"] = {"retr_mb_s": 800.0, "retr_ratio": 0.40}
    assert [s for _, s, _ in evaluate_targets(results)] == ["PASS"] * 8


def test_a_password_check_cheaper_than_sha512_crypt_fails() -> None:
    ftpd = _server(0.97, 1.01, 160.0, 0.2, 38.0, tuple(FULL.hold_steps()))
    ftpd["kdf"] = {"ftpd_scheme": "$scrypt$ln=4,r=1,p=1", "ftpd_ms": 0.1,
                   "sha512_crypt_ms": 5.0, "ratio": 0.02}
    name, status, detail = evaluate_targets(_results(ftpd))[-1]
    assert "SHA-512 crypt" in name and status == "FAIL"
    assert detail == ("$scrypt$ln=4,r=1,p=1: 0.1 ms against SHA-512 crypt (5,000 rounds): "
                      "5.0 ms = 0.0x")


def test_ratio_below_095_or_below_a_peer_fails() -> None:
    rows = evaluate_targets(_results(_server(0.93, 0.99, 160, 0.2, 38, tuple(FULL.hold_steps()))))
    assert rows[0][1] == "FAIL"  # RETR 0.93 < 0.95
    assert rows[1][1] == "FAIL"  # STOR 0.99 >= 0.95 but below vsftpd's 1.0
    assert "best peer 1.000" in rows[1][2]


def test_session_rate_needs_one_and_a_half_times_the_best_peer() -> None:
    rows = evaluate_targets(_results(_server(1, 1, 149.0, 0.2, 38, tuple(FULL.hold_steps()))))
    assert rows[2][1] == "FAIL"
    assert "1.49x best peer (100.0/s)" in rows[2][2]


def test_storm_must_beat_every_peer_and_unfinished_peers_count_as_slower() -> None:
    rows = evaluate_targets(_results(_server(1, 1, 160, 1.9, 38, tuple(FULL.hold_steps()))))
    assert rows[3][1] == "PASS"  # vsftpd 2.0 s, proftpd never finished
    rows = evaluate_targets(_results(_server(1, 1, 160, 2.5, 38, tuple(FULL.hold_steps()))))
    assert rows[3][1] == "FAIL"
    rows = evaluate_targets(_results(_server(1, 1, 160, None, 38, tuple(FULL.hold_steps()))))
    assert rows[3][1] == "FAIL"


def test_pss_target_is_a_tenth_of_the_smallest_peer() -> None:
    rows = evaluate_targets(_results(_server(1, 1, 160, 0.2, 40.0, tuple(FULL.hold_steps()))))
    assert rows[4][1] == "FAIL"  # 40 > 0.1 * 390
    assert "0.103x" in rows[4][2]


def test_capacity_counts_the_last_step_without_errors() -> None:
    server = _server(1, 1, 160, 0.2, 38, tuple(FULL.hold_steps()), fail_at=7000)
    assert capacity(server) == 6000
    rows = evaluate_targets(_results(server))
    assert rows[5][1] == "FAIL"
    assert "held 6,000" in rows[5][2]
    assert capacity({"hold": []}) is None


def test_quick_profile_does_not_judge_capacity() -> None:
    ftpd = _server(1, 1, 160, 0.2, 38, tuple(QUICK.hold_steps()))
    rows = evaluate_targets(_results(ftpd, QUICK))
    assert rows[5][1] == "n/a"
    assert "quick" in rows[5][2]


def test_pss_only_when_the_step_was_fully_held() -> None:
    server = {"hold": [{"step": 1000, "held": 990, "total_errors": 10,
                        "server_pss_kib": 1024.0}]}
    assert pss_mib(server, 1000) is None
    server["hold"][0].update(held=1000)
    assert pss_mib(server, 1000) == 1.0


def test_without_ftpd_every_target_is_na() -> None:
    assert {s for _, s, _ in evaluate_targets(_results(None))} == {"n/a"}


def test_render_has_tables_and_ratio_column() -> None:
    ftpd = _server(0.97, 1.01, 160.0, 0.2, 38.0, tuple(FULL.hold_steps()))
    text = render(_results(ftpd))
    assert "| metric | ftpd | vsftpd | proftpd | ftpd / best peer |" in text
    assert "| sessions/s, N=200 | 160.0 | 100.0 | 80.0 | 1.60 |" in text
    assert "| PSS MiB, 1000 idle sessions | 38.0 | 390.0 | 900.0 | 0.10 |" in text
    assert "| login storm: all logged in, s | 0.200 | 2.000 | — | 0.10 |" in text
    assert "smoke test" not in text
    assert "FTPS" in text


def test_render_marks_quick_runs_and_peer_only_runs() -> None:
    text = render(_results(None, QUICK))
    assert "quick run: a smoke test" in text
    assert "ftpd / best peer" not in text
    assert "| metric | vsftpd | proftpd |" in text


def test_render_flags_a_busy_machine() -> None:
    results = _results(None, QUICK)
    results["servers"]["vsftpd"]["background_cpu_busy"] = 0.02
    results["servers"]["proftpd"]["background_cpu_busy"] = 0.45
    text = render(results)
    assert "vsftpd 2%, proftpd 45%" in text
    assert "Above 10% for proftpd" in text
