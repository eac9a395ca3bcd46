"""RETR and STOR of one large file with curl, each paired with a bare loopback copy."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import system
from bench.barecopy import BareServer
from bench.guard import url_host
from bench.stats import median, ratio
from bench.tls import Negotiated, last_curl_error, parse_curl_verbose

CURL_TIMEOUT_S = 600
CURL_FORMAT = "%{time_pretransfer} %{time_total} %{size_download} %{size_upload}\\n"


@dataclass
class Timed:
    """One transfer: bytes moved, seconds from curl's start and of the data phase."""

    bytes: int
    total_s: float
    data_s: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.data_s / 1e6 if self.data_s > 0 else 0.0


def parse_curl_times(line: str, upload: bool) -> Timed:
    """curl -w output: data phase = time_total - time_pretransfer (login and commands
    before the transfer are not part of the throughput)."""
    pretransfer, total, down, up = line.split()
    moved = int(float(up if upload else down))
    return Timed(moved, float(total), max(float(total) - float(pretransfer), 1e-9))


def run_curl(args: list[str], config: str, upload: bool) -> Timed:
    """Run curl with credentials in a config on stdin (never in argv)."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--config", "-",
         "--write-out", CURL_FORMAT, *args],
        input=config, capture_output=True, text=True, timeout=CURL_TIMEOUT_S, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"curl failed ({result.returncode}): {result.stderr.strip()}")
    return parse_curl_times(result.stdout.strip().splitlines()[-1], upload)


def curl_config(user: system.BenchUser) -> str:
    escaped = f"{user.name}:{user.password}".replace("\\", "\\\\").replace('"', '\\"')
    return f'user = "{escaped}"\n'


def ftp_retr(host: str, port: int, user: system.BenchUser) -> Timed:
    url = f"ftp://{url_host(host)}:{port}/pub/{user.big_file.name}"
    return run_curl(["--output", "/dev/null", url], curl_config(user), upload=False)


def ftp_stor(host: str, port: int, user: system.BenchUser) -> Timed:
    url = f"ftp://{url_host(host)}:{port}/up/{user.big_file.name}"
    return run_curl(["--upload-file", str(user.big_file), url], curl_config(user), upload=True)


def bare_retr(host: str, user: system.BenchUser) -> Timed:
    server = BareServer(host, "send", user.big_file)
    server.start()
    try:
        timed = run_curl(["--output", "/dev/null",
                          f"http://{url_host(host)}:{server.port}/big.bin"], "", upload=False)
    finally:
        server.join(CURL_TIMEOUT_S)
    if server.error:
        raise RuntimeError(f"bare sendfile server: {server.error}")
    return timed


def bare_stor(host: str, user: system.BenchUser) -> Timed:
    server = BareServer(host, "recv", user.upload_dir / "bare.bin")
    server.start()
    try:
        # "Expect:" off: curl would otherwise wait for a 100 Continue before the body.
        timed = run_curl(["--upload-file", str(user.big_file), "--header", "Expect:",
                          f"http://{url_host(host)}:{server.port}/bare.bin"], "", upload=True)
    finally:
        server.join(CURL_TIMEOUT_S)
    if server.error:
        raise RuntimeError(f"bare recv server: {server.error}")
    return timed


def _checked_upload(user: system.BenchUser, name: str, expected: int) -> None:
    stored = user.upload_dir / name
    size = stored.stat().st_size if stored.exists() else -1
    if size != expected:
        raise RuntimeError(f"upload stored {size} bytes, expected {expected}")


def _paired(kind: str, timed: Timed, bare: Timed) -> dict[str, Any]:
    """One round's record for `kind` ("retr" or "stor"): both timings and their ratio."""
    return {kind: asdict(timed), f"bare_{kind}": asdict(bare),
            f"{kind}_mb_s": round(timed.mb_per_s, 1),
            f"bare_{kind}_mb_s": round(bare.mb_per_s, 1),
            f"{kind}_ratio": ratio(timed.mb_per_s, bare.mb_per_s)}


def _download_pair(label: str, download: Callable[[], Timed], host: str,
                   user: system.BenchUser) -> dict[str, Any]:
    """The timed download from the warm page cache, checked, then its bare sendfile copy."""
    size = user.big_file.stat().st_size
    system.clear_uploads(user)
    system.warm_page_cache(user.big_file)
    timed = download()
    if timed.bytes != size:
        raise RuntimeError(f"{label} moved {timed.bytes} bytes, expected {size}")
    return _paired("retr", timed, bare_retr(host, user))


def measure(host: str, port: int, user: system.BenchUser, reps: int) -> dict[str, Any]:
    """`reps` rounds of: RETR, bare send; STOR, bare recv. Ratios are per pair."""
    size = user.big_file.stat().st_size
    rounds: list[dict[str, Any]] = []
    for _ in range(reps):
        record = _download_pair("RETR", lambda: ftp_retr(host, port, user), host, user)
        system.clear_uploads(user)
        stor = ftp_stor(host, port, user)
        _checked_upload(user, user.big_file.name, size)
        system.clear_uploads(user)
        bare_up = bare_stor(host, user)
        _checked_upload(user, "bare.bin", size)
        system.clear_uploads(user)
        rounds.append({**record, **_paired("stor", stor, bare_up)})
        time.sleep(0.5)

    def med(key: str) -> float | None:
        return _median_of(rounds, key)

    return {
        "file_bytes": size,
        "reps": reps,
        "rounds": rounds,
        "retr_mb_s": med("retr_mb_s"), "bare_retr_mb_s": med("bare_retr_mb_s"),
        "stor_mb_s": med("stor_mb_s"), "bare_stor_mb_s": med("bare_stor_mb_s"),
        "retr_ratio": med("retr_ratio"), "stor_ratio": med("stor_ratio"),
    }


# --- FTPS RETR -------------------------------------------------------------------------
# Each server is started a second time with TLS required for login and data and the run's
# one certificate (servers.Context.tls); curl does explicit FTPS (AUTH TLS, PBSZ 0,
# PROT P) and resumes the control connection's TLS session on the data connection, so the
# servers' session-reuse checks stay at their defaults. Timed like plain RETR and paired
# with the same bare sendfile copy (plain TCP: the ratio is what TLS costs each server).
FTPS_ARGS = ["--ssl-reqd", "--insecure"]


def ftps_url(host: str, port: int, name: str) -> str:
    return f"ftp://{url_host(host)}:{port}/pub/{name}"


def ftps_retr(host: str, port: int, user: system.BenchUser) -> Timed:
    """curl --ssl-reqd --insecure --output /dev/null ftp://HOST:PORT/pub/big.bin"""
    return run_curl([*FTPS_ARGS, "--output", "/dev/null",
                     ftps_url(host, port, user.big_file.name)], curl_config(user),
                    upload=False)


def ftps_probe(host: str, port: int, user: system.BenchUser) -> Negotiated:
    """One untimed verbose FTPS RETR of the small file: proves TLS works end to end and
    records the negotiated version and cipher and whether the data connection resumed
    the control connection's session. RuntimeError (curl's reason) if it fails."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--verbose", "--config", "-",
         *FTPS_ARGS, "--output", "/dev/null", ftps_url(host, port, user.small_file.name)],
        input=curl_config(user), capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"FTPS probe failed ({result.returncode}): "
                           f"{last_curl_error(result.stderr, user.password)}")
    negotiated = parse_curl_verbose(result.stderr)
    if negotiated.version is None:
        raise RuntimeError("FTPS probe: curl reported no TLS handshake")
    return negotiated


def _median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    value = median(r[key] for r in rounds if r[key] is not None)
    return None if value is None else round(value, 3)


def measure_ftps(host: str, port: int, user: system.BenchUser, reps: int) -> dict[str, Any]:
    """The probe, then `reps` rounds of: FTPS RETR, bare send. Ratios are per pair."""
    size = user.big_file.stat().st_size
    negotiated = ftps_probe(host, port, user)
    rounds: list[dict[str, Any]] = []
    for _ in range(reps):
        rounds.append(_download_pair("FTPS RETR", lambda: ftps_retr(host, port, user),
                                     host, user))
        time.sleep(0.5)
    return {
        "file_bytes": size,
        "reps": reps,
        "probe": negotiated.as_dict(),
        "rounds": rounds,
        "retr_mb_s": _median_of(rounds, "retr_mb_s"),
        "bare_retr_mb_s": _median_of(rounds, "bare_retr_mb_s"),
        "retr_ratio": _median_of(rounds, "retr_ratio"),
    }
