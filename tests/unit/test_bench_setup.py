"""Pure pieces of the bench set-up: Debian dependency walk, ftpd config, curl and HTTP parsing."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path

import pytest

from bench import servers
from bench.barecopy import BareServer, content_length
from bench.debs import missing_libraries, parse_depends
from bench.profiles import FULL, QUICK
from bench.system import BenchUser
from bench.throughput import parse_curl_times


def test_parse_depends_drops_versions_and_keeps_alternatives() -> None:
    field = "debconf (>= 0.5) | debconf-2.0, libc6 (>= 2.34), libwrap0 (>= 7.6-4~), libfoo:any"
    assert parse_depends(field) == [["debconf", "debconf-2.0"], ["libc6"], ["libwrap0"],
                                    ["libfoo"]]
    assert parse_depends("") == []


def test_only_missing_libraries_are_unpacked() -> None:
    groups = parse_depends("adduser, libc6 (>= 2.34), libwrap0, debconf | debconf-2.0, "
                           "libmemcached11")
    assert missing_libraries(groups, installed={"libc6"}) == ["libwrap0", "libmemcached11"]
    assert missing_libraries(groups, installed={"libc6", "libwrap0", "libmemcached11"}) == []


def _ctx(tmp_path: Path, **kwargs: object) -> servers.Context:
    user = BenchUser("ftpbench", "pw", tmp_path / "home", 1001, 1001)
    return servers.Context(tmp_path, "127.0.0.1", 21210, (22000, 31999), user, **kwargs)  # type: ignore[arg-type]


def test_ftpd_config_is_valid_toml_with_production_settings(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, ftpd_overrides=servers.parse_overrides(
        ["users.auth_cache_seconds=0", "server.workers=2"]))
    text = servers.render_toml(servers.ftpd_settings(ctx, tmp_path / "users.toml"))
    config = tomllib.loads(text)
    assert config["server"]["workers"] == 2
    assert config["server"]["listen"] == ["127.0.0.1:21210"]
    assert config["server"]["user"] == config["server"]["group"] == "ftpbench"
    assert config["server"]["max_sessions_per_ip"] == 0
    assert config["server"]["max_sessions"] >= FULL.capacity_target
    assert config["passive"]["ports"] == "22000-31999"
    assert config["users"] == {"file": str(tmp_path / "users.toml"), "auth_cache_seconds": 0}


@pytest.mark.parametrize("bad", ["workers=2", "server.workers", "Server.x=1"])
def test_bad_overrides_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        servers.parse_overrides([bad])


def test_curl_times_count_the_data_phase() -> None:
    timed = parse_curl_times("0.010 1.010 1000000000 0", upload=False)
    assert timed.bytes == 1_000_000_000 and timed.data_s == pytest.approx(1.0)
    assert timed.mb_per_s == pytest.approx(1000.0)
    up = parse_curl_times("0.5 2.5 0 2000000000", upload=True)
    assert up.bytes == 2_000_000_000 and up.mb_per_s == pytest.approx(1000.0)


def test_content_length() -> None:
    assert content_length(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 42") == 42
    with pytest.raises(ValueError):
        content_length(b"PUT /x HTTP/1.1\r\nHost: a")


def test_bare_server_round_trips_on_loopback(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(300_000))
    server = BareServer("127.0.0.1", "send", source)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    server.join(10)
    assert server.error is None
    assert data.partition(b"\r\n\r\n")[2] == source.read_bytes()

    target = tmp_path / "dst.bin"
    server = BareServer("127.0.0.1", "recv", target)
    server.start()
    body = source.read_bytes()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PUT /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        reply = sock.recv(1024)
    server.join(10)
    assert server.error is None and reply.startswith(b"HTTP/1.0 200")
    assert target.read_bytes() == body


def test_profiles_are_bounded() -> None:
    for profile in (FULL, QUICK):
        steps = profile.hold_steps()
        assert steps == sorted(steps) and steps[0] == 0
        assert max(steps) <= profile.capacity_target
        assert profile.session_duration_s <= 60 and profile.reps >= 1
    assert max(FULL.hold_steps()) == FULL.capacity_target == 10000
    assert set(FULL.session_clients) == {50, 200} and FULL.storm_clients == 300
