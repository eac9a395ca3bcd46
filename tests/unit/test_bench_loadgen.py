"""The load generator's protocol pieces: reply parsing, passive replies, retry decisions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.guard import NotLoopbackError
from bench.loadgen import (
    Control,
    FtpError,
    RetryPolicy,
    Target,
    error_kind,
    login_retrying,
    parse_epsv,
    parse_pasv,
    retryable,
)


class FakeWriter:
    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


def _control(data: bytes) -> tuple[Control, FakeWriter]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    writer = FakeWriter()
    return Control(reader, writer), writer  # type: ignore[arg-type]


def test_single_and_multi_line_replies() -> None:
    async def go() -> list[tuple[int, str]]:
        ctl, _ = _control(b"220-Welcome\r\n220-more\r\n220 ready\r\n230 ok\r\n")
        return [await ctl.reply(), await ctl.reply()]

    first, second = asyncio.run(go())
    assert first[0] == 220 and first[1].endswith("220 ready\r\n")
    assert second == (230, "230 ok\r\n")


def test_cmd_sends_crlf_and_checks_the_code() -> None:
    async def go() -> tuple[FakeWriter, BaseException | None]:
        ctl, writer = _control(b"331 need password\r\n530 no\r\n")
        await ctl.cmd("USER bob", 331)
        try:
            await ctl.cmd("PASS x", 230)
        except FtpError as exc:
            return writer, exc
        return writer, None

    writer, exc = asyncio.run(go())
    assert writer.sent == b"USER bob\r\nPASS x\r\n"
    assert isinstance(exc, FtpError) and exc.code == 530 and exc.kind == "530 to PASS"


@pytest.mark.parametrize("data, kind", [(b"", "control closed"), (b"hello\r\n", "malformed reply"),
                                        (b"220-a\r\n", "control closed")])
def test_broken_replies(data: bytes, kind: str) -> None:
    async def go() -> None:
        ctl, _ = _control(data)
        await ctl.reply()

    with pytest.raises(FtpError, match=kind):
        asyncio.run(go())


def test_parse_epsv_and_pasv() -> None:
    assert parse_epsv("229 Entering Extended Passive Mode (|||6446|)\r\n") == 6446
    assert parse_epsv("229 ok (!!!22001!)") == 22001
    with pytest.raises(FtpError):
        parse_epsv("229 Entering Extended Passive Mode")
    assert parse_pasv("227 Entering Passive Mode (127,0,0,1,86,34).") == ("127.0.0.1", 22050)
    with pytest.raises(FtpError):
        parse_pasv("227 nonsense (1,2,3)")


def test_retry_decisions() -> None:
    assert retryable(ConnectionRefusedError())
    assert retryable(ConnectionResetError())
    assert retryable(FtpError("421 to connect", 421))
    assert retryable(FtpError("no greeting in time"))
    assert retryable(FtpError("control closed"))
    assert not retryable(FtpError("530 to PASS", 530))
    assert not retryable(TimeoutError())
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(FtpError("530 to PASS", 530)) == "530 to PASS"
    assert error_kind(ConnectionResetError()) == "ConnectionResetError"


def test_login_retrying_gives_up_after_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    async def refuse(target: Target, policy: RetryPolicy) -> Control:
        calls.append(target)
        raise ConnectionRefusedError

    monkeypatch.setattr("bench.loadgen.login", refuse)
    policy = RetryPolicy(max_retries=3, backoff_s=0.001)
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(login_retrying(Target("127.0.0.1", 1, "u", "p"), policy))
    assert len(calls) == 4


def test_login_retrying_counts_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[BaseException | None] = [FtpError("421 to connect", 421), None]
    made: list[Control] = []

    async def flaky(target: Target, policy: RetryPolicy) -> Control:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        made.append(_control(b"")[0])
        return made[-1]

    monkeypatch.setattr("bench.loadgen.login", flaky)
    retries: list[int] = []
    got = asyncio.run(login_retrying(Target("127.0.0.1", 1, "u", "p"),
                                     RetryPolicy(backoff_s=0.001), lambda: retries.append(1)))
    assert got is made[0] and retries == [1]


def test_policy_is_described_for_the_report() -> None:
    text = RetryPolicy().describe()
    assert "retry up to 5 times" in text and "10 s" in text


def test_main_refuses_non_loopback_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import loadgen

    monkeypatch.setenv("FTPBENCH_PASSWORD", "x")
    with pytest.raises(NotLoopbackError):
        loadgen.main(["storm", "--host", "10.0.0.1", "--port", "21", "--user", "u"])
