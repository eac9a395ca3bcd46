"""FTPS RETR workload: server TLS settings, curl's verbose output, report and merge."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench import report, servers
from bench.debs import Unpacked
from bench.profiles import FULL, QUICK
from bench.system import BenchUser
from bench.tls import TlsFiles, last_curl_error, openssl_req_argv, parse_curl_verbose

TLS = TlsFiles(Path("/run/x/tls/cert.pem"), Path("/run/x/tls/key.pem"))


def _ctx(tmp_path: Path, tls: TlsFiles | None = TLS, **kwargs: Any) -> servers.Context:
    user = BenchUser("ftpbench", "pw", tmp_path / "home", 1001, 1001)
    return servers.Context(tmp_path, "127.0.0.1", 21210, (22000, 31999), user, tls=tls,
                           **kwargs)


def _unpacked(tmp_path: Path, *, mod_tls: bool, crypto: str | None = "1.3.8-4") -> Unpacked:
    root = tmp_path / "root"
    for rel in ("usr/sbin/proftpd", "usr/sbin/vsftpd", "usr/sbin/pure-ftpd"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    modules = root / "usr/lib/proftpd"
    modules.mkdir(parents=True, exist_ok=True)
    if mod_tls:
        (modules / "mod_tls.so").write_text("")
    versions = {"proftpd-core": "1.3.8-4", "vsftpd": "3.0.3", "pure-ftpd": "1.0.50"}
    if crypto:
        versions["proftpd-mod-crypto"] = crypto
    return Unpacked(root, versions)


def test_ftpd_tls_settings_require_tls_everywhere(tmp_path: Path) -> None:
    config = tomllib.loads(servers.render_toml(servers.ftpd_settings(
        _ctx(tmp_path), tmp_path / "users.toml")))
    assert config["tls"] == {"certificate": str(TLS.certificate), "key": str(TLS.key),
                             "require": "all"}
    plain = tomllib.loads(servers.render_toml(servers.ftpd_settings(
        _ctx(tmp_path, tls=None), tmp_path / "users.toml")))
    assert "tls" not in plain


def test_ftpd_tls_overrides_win(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, ftpd_overrides=servers.parse_overrides(['tls.max_version="1.2"']))
    config = tomllib.loads(servers.render_toml(servers.ftpd_settings(ctx, tmp_path / "u")))
    assert config["tls"]["max_version"] == "1.2" and config["tls"]["require"] == "all"


def test_vsftpd_tls_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "_links_libssl", lambda binary, env: True)
    plan = servers.vsftpd_plan(_ctx(tmp_path, unpacked=_unpacked(tmp_path, mod_tls=False)))
    conf = dict(line.split("=", 1) for line in
                (tmp_path / "vsftpd.conf").read_text().splitlines())
    assert conf["ssl_enable"] == "YES" and conf["allow_anon_ssl"] == "NO"
    assert conf["force_local_data_ssl"] == conf["force_local_logins_ssl"] == "YES"
    assert conf["rsa_cert_file"] == str(TLS.certificate)
    assert conf["rsa_private_key_file"] == str(TLS.key)
    assert "require_ssl_reuse" not in conf  # default: YES
    assert any(n.startswith("TLS: ") for n in plan.notes)
    monkeypatch.setattr(servers, "_links_libssl", lambda binary, env: False)
    with pytest.raises(servers.TlsUnsupported, match="not built with TLS"):
        servers.vsftpd_plan(_ctx(tmp_path, unpacked=_unpacked(tmp_path, mod_tls=False)))


def test_vsftpd_plain_config_has_no_tls(tmp_path: Path) -> None:
    servers.vsftpd_plan(_ctx(tmp_path, tls=None, unpacked=_unpacked(tmp_path, mod_tls=False)))
    text = (tmp_path / "vsftpd.conf").read_text()
    assert "ssl_enable=NO" in text and "rsa_cert_file" not in text


def test_proftpd_loads_mod_tls_from_the_unpacked_tree(tmp_path: Path) -> None:
    unpacked = _unpacked(tmp_path, mod_tls=True)
    servers.proftpd_plan(_ctx(tmp_path, unpacked=unpacked))
    text = (tmp_path / "proftpd.conf").read_text()
    assert f"ModulePath {unpacked.root / 'usr/lib/proftpd'}\nLoadModule mod_tls.c\n" in text
    for line in ("TLSEngine on", "TLSRequired on", f"TLSRSACertificateFile {TLS.certificate}",
                 f"TLSRSACertificateKeyFile {TLS.key}"):
        assert line in text.splitlines()
    assert "NoSessionReuseRequired" not in text
    servers.proftpd_plan(_ctx(tmp_path, tls=None, unpacked=unpacked))
    assert "TLS" not in (tmp_path / "proftpd.conf").read_text()


def test_proftpd_without_mod_tls_or_with_a_mismatch_is_na(tmp_path: Path) -> None:
    with pytest.raises(servers.TlsUnsupported, match="proftpd-mod-crypto"):
        servers.proftpd_plan(_ctx(tmp_path, unpacked=_unpacked(tmp_path, mod_tls=False)))
    with pytest.raises(servers.TlsUnsupported, match="does not match"):
        servers.proftpd_plan(_ctx(tmp_path, unpacked=_unpacked(tmp_path, mod_tls=True,
                                                               crypto="1.3.8-5")))


def test_pureftpd_tls_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unpacked = _unpacked(tmp_path, mod_tls=False)
    plain = servers.pureftpd_plan(_ctx(tmp_path, tls=None, unpacked=unpacked))
    assert plain.argv[-2:] == ["--tls", "0"]
    monkeypatch.setattr(servers, "_pureftpd_tls_problem", lambda binary, env: None)
    plan = servers.pureftpd_plan(_ctx(tmp_path, unpacked=unpacked))
    assert plan.argv[-4:] == ["--tls", "3", "--certfile", f"{TLS.certificate},{TLS.key}"]
    monkeypatch.setattr(servers, "_pureftpd_tls_problem",
                        lambda binary, env: "pure-ftpd not built with TLS")
    with pytest.raises(servers.TlsUnsupported, match="not built with TLS"):
        servers.pureftpd_plan(_ctx(tmp_path, unpacked=unpacked))


def test_openssl_request_is_a_self_signed_rsa_2048_for_the_address(tmp_path: Path) -> None:
    argv = openssl_req_argv(tmp_path / "c.pem", tmp_path / "k.pem", "127.0.0.1")
    assert argv[:3] == ["openssl", "req", "-x509"]
    assert "rsa:2048" in argv and "-nodes" in argv
    assert "subjectAltName=IP:127.0.0.1" in argv and "/CN=127.0.0.1" in argv


def test_make_certificate(tmp_path: Path) -> None:
    from bench.tls import make_certificate
    try:
        files = make_certificate(tmp_path / "tls", "127.0.0.1")
    except FileNotFoundError:
        pytest.skip("no openssl")
    assert files.key.stat().st_mode & 0o777 == 0o600
    text = subprocess.run(["openssl", "x509", "-in", str(files.certificate), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "Public-Key: (2048 bit)" in text


VERBOSE = """\
*   Trying 127.0.0.1:21210...
* Connected to 127.0.0.1 (127.0.0.1) port 21210 (#0)
< 220 ftpd ready
> AUTH TLS
< 234 AUTH TLS successful
* SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384
> USER ftpbench
> PASS s3cret
< 230 Login successful.
> PBSZ 0
> PROT P
*   Trying 127.0.0.1:22014...
* SSL re-using session ID
* SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384
< 226 Transfer complete.
"""


def test_parse_curl_verbose() -> None:
    negotiated = parse_curl_verbose(VERBOSE)
    assert (negotiated.version, negotiated.cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    assert (negotiated.handshakes, negotiated.resumed) == (2, 1)
    assert parse_curl_verbose("* Connected\n").as_dict() == {
        "tls_version": None, "tls_cipher": None, "handshakes": 0, "resumed": 0}


def test_curl_error_line_hides_the_password() -> None:
    stderr = VERBOSE + "< 522 SSL connection failed: session reuse required\n" \
        "curl: (64) Requested SSL level failed\n"
    assert last_curl_error(stderr, "s3cret") == "curl: (64) Requested SSL level failed"
    assert last_curl_error("> PASS s3cret\n", "s3cret") == "no output"


# --- report --------------------------------------------------------------------------------

def _ftps(ratio_: float, mb_s: float = 900.0) -> dict[str, Any]:
    return {"retr_mb_s": mb_s, "bare_retr_mb_s": 2000.0, "retr_ratio": ratio_,
            "notes": ["x", "TLS: force it"], "background_cpu_busy": 0.01,
            "probe": {"tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_256_GCM_SHA384",
                      "handshakes": 2, "resumed": 1}}


def _results(servers_: dict[str, dict[str, Any]], profile: Any = FULL,
             workloads: tuple[str, ...] = ("ftps",)) -> dict[str, Any]:
    return {"meta": {"profile": profile.as_dict(), "machine": {"date": "2026-11-21"},
                     "workloads": list(workloads), "command": "bench/run --workloads ftps"},
            "servers": {n: {"name": n, "errors": [], "version": "1", "notes": [], **s}
                        for n, s in servers_.items()}}


def test_ftps_states() -> None:
    assert report.ftps_state({"ftps": _ftps(0.4)}) is None
    assert report.ftps_state({"ftps": {"skipped": "not in --workloads"}}) == "skipped"
    assert report.ftps_state({"ftps": {"na": "pure-ftpd not built with TLS"}}) == \
        "n/a: pure-ftpd not built with TLS"
    assert report.ftps_state({"ftps": {"failed": "a | b\nc"}}) == "failed: a / b c"
    assert report.ftps_state({}) == "—"
    assert len(report.ftps_state({"ftps": {"failed": "x" * 500}}) or "") < 140


def test_ftps_target() -> None:
    def status(ftpd: dict[str, Any], *peers: dict[str, Any]) -> tuple[str, str]:
        return report.ftps_target({"ftps": ftpd}, [{"ftps": p} for p in peers])

    assert status(_ftps(0.5), _ftps(0.45), {"na": "no TLS"})[0] == "PASS"
    assert status(_ftps(0.5), _ftps(0.55)) == ("FAIL", "0.500 (best peer 0.550)")
    assert status(_ftps(0.5), {"na": "no TLS"}) == ("n/a", "0.500; no peer measured")
    assert status({"skipped": "not in --workloads"})[0] == "skipped"
    assert status({"failed": "curl: (64)"}, _ftps(0.5)) == ("FAIL", "failed: curl: (64)")


def test_render_ftps_only_run() -> None:
    text = report.render(_results({
        "ftpd": {"ftps": _ftps(0.50, 1000.0)}, "vsftpd": {"ftps": _ftps(0.40, 800.0)},
        "proftpd": {"ftps": {"na": "mod_tls.so not unpacked"}},
        "pure-ftpd": {"ftps": {"failed": "curl: (28) timeout"}}}, QUICK))
    assert "## Results" not in text and "sessions/s" not in text
    assert "| FTPS RETR MB/s (curl, median) | 1,000.0 | 800.0 | n/a: mod_tls.so not " \
           "unpacked | failed: curl: (28) timeout | 1.25 |" in text
    assert "|   FTPS RETR / bare copy | 0.500 | 0.400 | — | — | 1.25 |" in text
    assert "TLSv1.3 TLS_AES_256_GCM_SHA384" in text and "| 1 of 1 |" in text
    assert f"| {report.FTPS_TARGET} | PASS | 0.500 (best peer 0.400) |" in text
    assert "| STOR / paired bare copy" not in text
    assert "TLS set-up: ftpd: force it;" in text


def test_render_full_run_shows_ftps_skipped() -> None:
    text = report.render(_results({"ftpd": {"ftps": {"skipped": "not in --workloads"}},
                                   "vsftpd": {"ftps": {"skipped": "not in --workloads"}}},
                                  workloads=("throughput", "sessions", "storm", "hold")))
    assert "## Results" in text and "Workloads run: throughput" in text
    assert "## FTPS RETR\n\nNot run: `ftps` was not in `--workloads`." in text
    assert f"| {report.FTPS_TARGET} | skipped | skipped |" in text


OLD_MD = """\
# ftpd benchmarks

## Results

| metric | ftpd | vsftpd | ftpd / best peer |
|---|---:|---:|---:|
| RETR MB/s (curl, median) | 1.0 | 2.0 | 0.50 |
| FTPS RETR MB/s | skipped | skipped | |

## Targets

| target | status | measured |
|---|---|---|
| RETR / paired bare copy >= 0.95 and >= every peer's | PASS | 1.0 |
| FTPS RETR throughput | skipped | ftpd has no TLS yet |

## Method

- x
"""


def test_merge_ftps_into_an_earlier_results_md() -> None:
    ftps = _results({"ftpd": {"ftps": _ftps(0.5)}, "vsftpd": {"ftps": _ftps(0.6)}})
    merged = report.merge_ftps(OLD_MD, ftps, "NOTE")
    assert "| FTPS RETR MB/s | skipped" not in merged
    assert "FTPS RETR throughput" not in merged
    assert f"| {report.FTPS_TARGET} | FAIL | 0.500 (best peer 0.600) (see FTPS RETR) |" \
        in merged
    assert merged.index("## FTPS RETR") < merged.index("## Targets") < merged.index("## Method")
    assert "NOTE" in merged
    again = report.merge_ftps(merged, ftps, "NOTE 2")
    assert again.count("## FTPS RETR") == 1 and "NOTE 2" in again and "NOTE\n" not in again
    assert again.count(report.FTPS_TARGET) == 1


def test_merge_ftps_json_and_cli(tmp_path: Path) -> None:
    main = _results({"ftpd": {"throughput": {"retr_mb_s": 1.0}}, "vsftpd": {}},
                    workloads=("throughput",))
    ftps = _results({"ftpd": {"ftps": _ftps(0.5)}, "vsftpd": {"ftps": {"na": "no"}}})
    into, source = tmp_path / "into", tmp_path / "src"
    into.mkdir()
    source.mkdir()
    (into / "RESULTS.json").write_text(json.dumps(main))
    (into / "RESULTS.md").write_text(OLD_MD)
    (source / "RESULTS.json").write_text(json.dumps(ftps))
    assert report.main(["merge-ftps", str(source), "--into", str(into)]) == 0
    merged = json.loads((into / "RESULTS.json").read_text())
    assert merged["servers"]["ftpd"]["throughput"] == {"retr_mb_s": 1.0}
    assert merged["servers"]["ftpd"]["ftps"]["retr_ratio"] == 0.5
    assert merged["servers"]["vsftpd"]["ftps"] == {"na": "no"}
    assert merged["meta"]["ftps_run"]["command"] == "bench/run --workloads ftps"
    assert "bench/run --workloads ftps" in (into / "RESULTS.md").read_text()
