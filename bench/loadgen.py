"""Asyncio FTP load generator (raw sockets through asyncio streams; no ftplib).

Run as a process of its own so its CPU use is its own:

    python3 -m bench.loadgen sessions --port 2121 --user U --clients 200 --duration 15
    python3 -m bench.loadgen storm    --port 2121 --user U --clients 300
    python3 -m bench.loadgen hold     --port 2121 --user U --steps 0,200,1000

The password comes from the FTPBENCH_PASSWORD environment variable (not argv). Every
command prints JSON lines on stdout, each with the generator's own CPU share (CPU seconds
over wall seconds, where 1.0 is one core): near 1.0 the generator, not the server, is the
bottleneck. `hold` prints one line per step and waits for a line on stdin ("next" or
"stop") before the next step, so the caller can measure the server in between.
Everything is bounded: targets are loopback only, loops end at a deadline and a count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.guard import is_loopback_literal, require_loopback
from bench.stats import latency_summary

OP_TIMEOUT_S = 30.0  # one session (or one login) must finish within this
MAX_SESSIONS_PER_CLIENT = 1_000_000  # count bound next to the time bound
STORM_TIMEOUT_S = 120.0
RETRYABLE_CODES = {421}


class FtpError(Exception):
    """An unexpected reply or a protocol failure; `kind` is the key errors are counted by."""

    def __init__(self, kind: str, code: int | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.code = code


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, FtpError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def parse_epsv(text: str) -> int:
    """Port from a 229 reply: 'Entering Extended Passive Mode (|||6446|)'."""
    start = text.find("(")
    end = text.find(")", start)
    if start < 0 or end < 0:
        raise FtpError("bad 229 reply")
    inner = text[start + 1:end]
    delim = inner[:1]
    parts = inner.split(delim) if delim else []
    if len(parts) != 5 or not parts[3].isdigit():
        raise FtpError("bad 229 reply")
    return int(parts[3])


def parse_pasv(text: str) -> tuple[str, int]:
    """Host and port from a 227 reply: '(h1,h2,h3,h4,p1,p2)'."""
    start = text.find("(")
    end = text.find(")", start)
    numbers = text[start + 1:end].split(",") if 0 <= start < end else []
    if len(numbers) != 6 or not all(n.strip().isdigit() for n in numbers):
        raise FtpError("bad 227 reply")
    values = [int(n) for n in numbers]
    return ".".join(map(str, values[:4])), values[4] * 256 + values[5]


class Control:
    """The control connection: send a command, read a (possibly multi-line) reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self) -> tuple[int, str]:
        line = await self.reader.readline()
        if not line:
            raise FtpError("control closed")
        if len(line) < 4 or not line[:3].isdigit():
            raise FtpError("malformed reply")
        code = line[:3]
        lines = [line]
        if line[3:4] == b"-":
            end = code + b" "
            for _ in range(1000):
                line = await self.reader.readline()
                if not line:
                    raise FtpError("control closed")
                lines.append(line)
                if line.startswith(end):
                    break
        return int(code), b"".join(lines).decode("latin-1")

    async def expect(self, *codes: int, what: str = "") -> tuple[int, str]:
        code, text = await self.reply()
        if code not in codes:
            raise FtpError(f"{code} to {what or 'connect'}", code)
        return code, text

    async def cmd(self, line: str, *codes: int) -> tuple[int, str]:
        self.writer.write(line.encode("latin-1") + b"\r\n")
        return await self.expect(*codes, what=line.split(" ", 1)[0])

    def close(self) -> None:
        self.writer.close()


@dataclass
class Target:
    host: str
    port: int
    user: str
    password: str
    path: str = "pub/small.bin"
    size: int = 64 * 1024
    epsv: bool = True


@dataclass(frozen=True)
class RetryPolicy:
    """How a client that must log in (storm, hold) treats failures; printed in the report."""

    greeting_timeout_s: float = 10.0
    login_timeout_s: float = OP_TIMEOUT_S
    max_retries: int = 5
    backoff_s: float = 0.1

    def describe(self) -> str:
        return (
            f"connect and 220 greeting within {self.greeting_timeout_s:g} s, USER/PASS within "
            f"{self.login_timeout_s:g} s; connection refused or reset, no greeting in time "
            f"(a SYN-cookie half-open connection never gets one), closed before 230, or a "
            f"421 reply: retry up to {self.max_retries} times after "
            f"{int(self.backoff_s * 1000)} ms doubling; SYN retransmissions are the kernel's "
            f"and count as latency; anything else is an error at once"
        )


DEFAULT_POLICY = RetryPolicy()


async def login(target: Target, policy: RetryPolicy = DEFAULT_POLICY) -> Control:
    """Connect, read the greeting, USER/PASS; raises on anything but 230."""
    try:
        async with asyncio.timeout(policy.greeting_timeout_s):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            ctl = Control(reader, writer)
            try:
                await ctl.expect(220)
            except BaseException:
                ctl.close()
                raise
    except TimeoutError:
        raise FtpError("no greeting in time") from None
    try:
        async with asyncio.timeout(policy.login_timeout_s):
            code, _ = await ctl.cmd(f"USER {target.user}", 331, 230)
            if code == 331:
                await ctl.cmd(f"PASS {target.password}", 230)
    except BaseException:
        ctl.close()
        raise
    return ctl


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError | ConnectionResetError
                  | asyncio.IncompleteReadError):
        return True
    if isinstance(exc, FtpError):
        return exc.code in RETRYABLE_CODES or exc.kind in {"control closed",
                                                           "no greeting in time"}
    return False


async def login_retrying(target: Target, policy: RetryPolicy = DEFAULT_POLICY,
                         on_retry: Callable[[], None] = lambda: None) -> Control:
    """login() under the retry policy; on_retry() is called before every retry."""
    for attempt in range(policy.max_retries + 1):
        try:
            return await login(target, policy)
        except (OSError, FtpError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if not retryable(exc) or attempt == policy.max_retries:
                raise
        on_retry()
        await asyncio.sleep(policy.backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


async def transfer(ctl: Control, target: Target, command: str) -> int:
    """EPSV (or PASV), connect, send `command`, read the data to EOF; bytes received."""
    if target.epsv:
        _, text = await ctl.cmd("EPSV", 229)
        host, port = target.host, parse_epsv(text)
    else:
        _, text = await ctl.cmd("PASV", 227)
        host, port = parse_pasv(text)
        if not is_loopback_literal(host):  # never follow a reply off this machine
            raise FtpError("PASV address not loopback")
    reader, writer = await asyncio.open_connection(host, port)
    received = 0
    try:
        ctl.writer.write(command.encode("latin-1") + b"\r\n")
        await ctl.expect(150, 125, what=command.split(" ", 1)[0])
        while chunk := await reader.read(256 * 1024):
            received += len(chunk)
    finally:
        writer.close()
    await ctl.expect(226, 250, what=command.split(" ", 1)[0] + " end")
    return received


async def one_session(target: Target) -> tuple[float, float]:
    """login, LIST, RETR the small file, QUIT: (login latency, session latency)."""
    start = time.perf_counter()
    ctl = await login(target)
    logged_in = time.perf_counter()
    try:
        await ctl.cmd("TYPE I", 200)
        await transfer(ctl, target, "LIST")
        got = await transfer(ctl, target, f"RETR {target.path}")
        if got != target.size:
            raise FtpError("short RETR")
        await ctl.cmd("QUIT", 221)
    finally:
        ctl.close()
    return logged_in - start, time.perf_counter() - start


@dataclass
class Usage:
    """The generator's own CPU use from creation to report()."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    def report(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        rusage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "loadgen_wall_s": round(wall, 3),
            "loadgen_cpu_s": round(cpu, 3),
            "loadgen_cpu_share": round(cpu / wall, 3) if wall > 0 else 0.0,
            "loadgen_maxrss_mib": round(rusage.ru_maxrss / 1024, 1),
        }


async def run_sessions(target: Target, clients: int, duration: float,
                       warmup: float) -> dict[str, Any]:
    """`clients` loops of one_session for warmup + duration seconds; counts the window."""
    usage = Usage()
    t0 = time.perf_counter()
    window = (t0 + warmup, t0 + warmup + duration)
    logins: list[float] = []
    sessions: list[float] = []
    errors: Counter[str] = Counter()
    completed = 0

    async def client() -> None:
        nonlocal completed
        for _ in range(MAX_SESSIONS_PER_CLIENT):
            if time.perf_counter() >= window[1]:
                return
            try:
                async with asyncio.timeout(OP_TIMEOUT_S):
                    login_s, session_s = await one_session(target)
            except (OSError, FtpError, TimeoutError, asyncio.IncompleteReadError) as exc:
                if time.perf_counter() >= window[0]:
                    errors[error_kind(exc)] += 1
                await asyncio.sleep(0.05)  # no hot loop against a refusing server
                continue
            end = time.perf_counter()
            if window[0] <= end <= window[1]:
                completed += 1
                logins.append(login_s)
                sessions.append(session_s)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "workload": "sessions",
        "clients": clients,
        "duration_s": duration,
        "warmup_s": warmup,
        "sessions": completed,
        "sessions_per_s": round(completed / duration, 2),
        "login": latency_summary(logins),
        "session": latency_summary(sessions),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        **usage.report(),
    }


async def run_storm(target: Target, clients: int) -> dict[str, Any]:
    """`clients` connect and log in at once; all stay logged in until everyone is done."""
    usage = Usage()
    held: list[Control] = []
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    retries = 0
    t0 = time.perf_counter()

    def count_retry() -> None:
        nonlocal retries
        retries += 1

    async def client() -> None:
        try:
            ctl = await login_retrying(target, on_retry=count_retry)
        except (OSError, FtpError, TimeoutError, asyncio.IncompleteReadError) as exc:
            errors[error_kind(exc)] += 1
            return
        latencies.append(time.perf_counter() - t0)
        held.append(ctl)

    try:
        async with asyncio.timeout(STORM_TIMEOUT_S):
            await asyncio.gather(*(client() for _ in range(clients)))
    except TimeoutError:
        errors["storm timeout"] += clients - len(latencies) - sum(errors.values())
    all_in = max(latencies) if len(latencies) == clients else None
    await close_all(held)
    return {
        "workload": "storm",
        "clients": clients,
        "logged_in": len(latencies),
        "all_logged_in_s": None if all_in is None else round(all_in, 4),
        "login": latency_summary(latencies),
        "retries": retries,
        "retry_policy": DEFAULT_POLICY.describe(),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        **usage.report(),
    }


async def close_all(sessions: list[Control], limit: int = 500) -> None:
    """QUIT every session (at most `limit` at a time), then close."""
    gate = asyncio.Semaphore(limit)

    async def quit_one(ctl: Control) -> None:
        async with gate:
            try:
                async with asyncio.timeout(5):
                    await ctl.cmd("QUIT", 221)
            except (OSError, FtpError, TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                ctl.close()

    await asyncio.gather(*(quit_one(c) for c in sessions))


async def check_alive(sessions: list[Control],
                      limit: int = 500) -> tuple[list[Control], Counter[str]]:
    """NOOP on every session; returns the live ones and the failures."""
    gate = asyncio.Semaphore(limit)
    errors: Counter[str] = Counter()

    async def probe(ctl: Control) -> Control | None:
        async with gate:
            try:
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await ctl.cmd("NOOP", 200)
                return ctl
            except (OSError, FtpError, TimeoutError, asyncio.IncompleteReadError) as exc:
                errors[error_kind(exc)] += 1
                ctl.close()
                return None

    results = await asyncio.gather(*(probe(c) for c in sessions))
    return [c for c in results if c is not None], errors


async def open_sessions(target: Target, count: int, concurrency: int) -> OpenResult:
    """Log `count` sessions in, at most `concurrency` logins at a time, under the policy."""
    gate = asyncio.Semaphore(concurrency)
    result = OpenResult()

    def count_retry() -> None:
        result.retries += 1

    async def open_one() -> None:
        async with gate:
            if result.errors:  # the step has failed: the rest would only fail slowly
                result.skipped += 1
                return
            t = time.perf_counter()
            try:
                ctl = await login_retrying(target, on_retry=count_retry)
            except (OSError, FtpError, TimeoutError, asyncio.IncompleteReadError) as exc:
                result.errors[error_kind(exc)] += 1
                return
            result.logins.append(time.perf_counter() - t)
            result.sessions.append(ctl)

    await asyncio.gather(*(open_one() for _ in range(max(0, count))))
    return result


@dataclass
class OpenResult:
    sessions: list[Control] = field(default_factory=list)
    logins: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    skipped: int = 0  # logins not attempted once the step had failed


async def run_hold(target: Target, steps: list[int], concurrency: int, settle: float,
                   wait_next: Callable[[], Awaitable[str]],
                   emit: Callable[[dict[str, Any]], None]) -> None:
    """Step up idle logged-in sessions; after each step report and wait for the caller."""
    usage = Usage()
    held: list[Control] = []
    total_errors = retries = 0
    try:
        for step in steps:
            started = time.perf_counter()
            opened = await open_sessions(target, step - len(held), concurrency)
            held.extend(opened.sessions)
            open_s = time.perf_counter() - started
            if held:
                await asyncio.sleep(settle)
            alive, dead = await check_alive(held)
            held[:] = alive
            errors = opened.errors + dead
            total_errors += sum(errors.values())
            retries += opened.retries
            emit({
                "workload": "hold", "step": step, "held": len(held),
                "open_s": round(open_s, 3), "login": latency_summary(opened.logins),
                "errors": sum(errors.values()), "error_kinds": dict(errors),
                "not_attempted": opened.skipped, "total_errors": total_errors,
                "retries": retries, **usage.report(),
            })
            if await wait_next() != "next":
                break
    finally:
        await close_all(held)


def raise_nofile() -> int:
    """Soft open-files limit up to the hard limit; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class StdinLines:
    """Lines from stdin without a thread (a blocked reader thread would stall exit)."""

    def __init__(self, timeout: float = 1800.0) -> None:
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None

    async def __call__(self) -> str:
        if self.reader is None:
            loop = asyncio.get_running_loop()
            self.reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(self.reader)
            await loop.connect_read_pipe(lambda: protocol, sys.stdin)
        try:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        except TimeoutError:
            return "stop"
        return line.decode().strip() or "stop"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1")
    common.add_argument("--port", type=int, required=True)
    common.add_argument("--user", required=True)
    common.add_argument("--path", default="pub/small.bin", help="file RETRieved per session")
    common.add_argument("--size", type=int, default=64 * 1024, help="its size in bytes")
    common.add_argument("--pasv", action="store_true", help="PASV instead of EPSV")
    s = sub.add_parser("sessions", parents=[common], help="session rate")
    s.add_argument("--clients", type=int, default=50)
    s.add_argument("--duration", type=float, default=15.0)
    s.add_argument("--warmup", type=float, default=2.0)
    s = sub.add_parser("storm", parents=[common], help="login storm")
    s.add_argument("--clients", type=int, default=300)
    s = sub.add_parser("hold", parents=[common], help="idle sessions, stepped")
    s.add_argument("--steps", default="0,200,1000")
    # Below the 32-connection listen backlog some peers use: more concurrent logins only
    # measure SYN-cookie half-open connections (see RetryPolicy), not capacity.
    s.add_argument("--concurrency", type=int, default=30)
    s.add_argument("--settle", type=float, default=1.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    password = os.environ.get("FTPBENCH_PASSWORD")
    if password is None:
        print("FTPBENCH_PASSWORD is not set", file=sys.stderr)
        return 2
    target = Target(require_loopback(args.host), args.port, args.user, password,
                    args.path, args.size, epsv=not args.pasv)
    nofile = raise_nofile()
    if args.command == "sessions":
        if not 0 < args.duration <= 3600 or not 0 < args.clients <= 5000:
            raise SystemExit("duration must be in (0, 3600] s and clients in (0, 5000]")
        result = asyncio.run(run_sessions(target, args.clients, args.duration, args.warmup))
        _emit(result)
    elif args.command == "storm":
        if not 0 < args.clients <= 5000:
            raise SystemExit("clients must be in (0, 5000]")
        _emit(asyncio.run(run_storm(target, args.clients)))
    else:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
        if steps != sorted(steps) or any(s < 0 or s > nofile - 100 for s in steps):
            raise SystemExit(f"steps must ascend within [0, {nofile - 100}] (open-files limit)")
        asyncio.run(run_hold(target, steps, args.concurrency, args.settle, StdinLines(), _emit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
