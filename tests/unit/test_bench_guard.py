"""The benchmark's loopback guard: only 127.0.0.0/8 and ::1 are ever targets."""

from __future__ import annotations

import socket

import pytest

from bench.guard import NotLoopbackError, is_loopback_literal, require_loopback, url_host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "127.255.255.254", "::1",
                                  "[::1]", " 127.0.0.1 "])
def test_loopback_literals_pass(host: str) -> None:
    assert is_loopback_literal(host)
    assert require_loopback(host) == host.strip().strip("[]")


def test_ipv4_mapped_loopback_passes() -> None:
    assert is_loopback_literal("::ffff:127.0.0.1")
    require_loopback("::ffff:127.0.0.1")


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.10", "172.16.0.1", "8.8.8.8",
                                  "0.0.0.0", "::", "::ffff:10.0.0.1", "2001:db8::1",
                                  "128.0.0.1", "126.255.255.255"])
def test_other_addresses_are_refused(host: str) -> None:
    assert not is_loopback_literal(host)
    with pytest.raises(NotLoopbackError):
        require_loopback(host)


def _fake_getaddrinfo(mapping: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def fake(host: str, *_args: object, **_kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in mapping[host]]
    return fake


def test_name_resolving_only_to_loopback_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo({"localhost": ["127.0.0.1"]}))
    assert require_loopback("localhost") == "127.0.0.1"


def test_name_with_any_non_loopback_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo",
                        _fake_getaddrinfo({"mixed": ["127.0.0.1", "10.1.1.1"]}))
    with pytest.raises(NotLoopbackError, match="only loopback"):
        require_loopback("mixed")


def test_unresolvable_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo({}))
    with pytest.raises(NotLoopbackError, match="does not resolve"):
        require_loopback("nowhere.invalid")


def test_url_host_brackets_ipv6() -> None:
    assert url_host("::1") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1"
