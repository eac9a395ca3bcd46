"""How each server under test is configured, started (one at a time) and stopped by PID.

Every server gets the same treatment: 127.0.0.1 on its own high port, the temporary user
chrooted to its home, the same passive range, writes allowed, no TLS, no reverse DNS,
no session limits below the capacity workload, idle timeout 600 s, and its open-files
limit (soft and hard) set to the machine's hard limit, as systemd's LimitNOFILE would.
Files a peer would keep under /etc or /run live in a per-server temporary directory.

With `Context.tls` set (the FTPS workload, a separate start of each server) the same
settings plus TLS: the run's one certificate, TLS required for login and for every data
connection, each server's data-connection session-reuse check at its default.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import system
from bench.debs import Unpacked
from bench.tls import TlsFiles

IDLE_TIMEOUT_S = 600
MAX_SESSIONS = 30000
PEER_PACKAGES = {
    "vsftpd": ["vsftpd"],
    "proftpd": ["proftpd-core"],
    "pure-ftpd": ["pure-ftpd", "pure-ftpd-common"],
}
# Unpacked only for the FTPS workload: Debian ships ProFTPD's mod_tls.so separately.
PEER_TLS_PACKAGES = {"proftpd": ["proftpd-mod-crypto"]}
# PAM service with no file in /etc/pam.d: PAM then uses /etc/pam.d/other (pam_unix against
# /etc/shadow), the same stack for all three peers whatever else the machine has installed.
PAM_SERVICE = "ftpbench"


@dataclass
class Context:
    """What a plan needs to know to configure one server."""

    workdir: Path
    host: str
    port: int
    pasv: tuple[int, int]
    user: system.BenchUser
    unpacked: Unpacked | None = None
    ftpd_bin: str | None = None
    # ftpd settings on top of the bench's: (section, key) -> TOML literal
    ftpd_overrides: dict[tuple[str, str], str] = field(default_factory=dict)
    tls: TlsFiles | None = None  # set: configure FTPS, required for login and data


class TlsUnsupported(RuntimeError):
    """This server, as unpacked here, cannot be configured for FTPS (the reason)."""


FTPD_USERS_FILE = "users.toml"  # in the server's work directory


@dataclass
class Plan:
    """A ready-to-run command line for one server."""

    name: str
    version: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # vsftpd writes its "500 OOPS" start-up errors to file descriptor 0.
    stdin_is_log: bool = False
    notes: list[str] = field(default_factory=list)


def _peer_env(ctx: Context) -> dict[str, str]:
    assert ctx.unpacked is not None
    return {"LD_LIBRARY_PATH": ctx.unpacked.library_path()}


def _peer_binary(ctx: Context, relative: str) -> str:
    assert ctx.unpacked is not None
    path = ctx.unpacked.binary(relative)
    if not path.exists():
        raise RuntimeError(f"{path} missing from the unpacked packages")
    return str(path)


def _links_libssl(binary: str, env: dict[str, str]) -> bool:
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False,
                            env=dict(os.environ, **env), timeout=60)
    return "libssl.so" in result.stdout


def vsftpd_plan(ctx: Context) -> Plan:
    empty = ctx.workdir / "empty"  # secure_chroot_dir: empty, root-owned, not writable
    empty.mkdir(mode=0o755, exist_ok=True)
    conf = ctx.workdir / "vsftpd.conf"
    settings = {
        "listen": "YES", "listen_ipv6": "NO", "listen_address": ctx.host,
        "listen_port": ctx.port, "background": "NO",
        "anonymous_enable": "NO", "local_enable": "YES", "write_enable": "YES",
        "local_umask": "022", "chroot_local_user": "YES",
        "pasv_enable": "YES", "pasv_min_port": ctx.pasv[0], "pasv_max_port": ctx.pasv[1],
        "pam_service_name": PAM_SERVICE, "secure_chroot_dir": empty, "nopriv_user": "nobody",
        "ssl_enable": "NO", "max_clients": 0, "max_per_ip": 0,
        "idle_session_timeout": IDLE_TIMEOUT_S, "data_connection_timeout": IDLE_TIMEOUT_S,
        "xferlog_enable": "NO", "dirmessage_enable": "NO", "connect_from_port_20": "NO",
        "vsftpd_log_file": ctx.workdir / "vsftpd.log",
    }
    binary = _peer_binary(ctx, "usr/sbin/vsftpd")
    notes = ["PAM: pam_unix, SHA-512 crypt on every login; 2 processes per session"]
    if ctx.tls:
        if not _links_libssl(binary, _peer_env(ctx)):
            raise TlsUnsupported("vsftpd not built with TLS (no libssl)")
        settings.update({
            "ssl_enable": "YES", "rsa_cert_file": ctx.tls.certificate,
            "rsa_private_key_file": ctx.tls.key, "allow_anon_ssl": "NO",
            "force_local_logins_ssl": "YES", "force_local_data_ssl": "YES",
        })  # require_ssl_reuse, ssl_ciphers, ssl_tlsv1: defaults
        notes.append("TLS: ssl_enable, force_local_logins_ssl + force_local_data_ssl, "
                     "require_ssl_reuse and ciphers at their defaults")
    conf.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    version = ctx.unpacked.versions.get("vsftpd", "?") if ctx.unpacked else "?"
    return Plan("vsftpd", version, [binary, str(conf)], _peer_env(ctx), stdin_is_log=True,
                notes=notes)


def proftpd_plan(ctx: Context) -> Plan:
    conf = ctx.workdir / "proftpd.conf"
    w = ctx.workdir
    conf.write_text(f"""\
ServerType standalone
ServerName "ftpbench"
DefaultServer on
Port {ctx.port}
DefaultAddress {ctx.host}
SocketBindTight on
UseIPv6 off
User nobody
Group nogroup
PidFile {w}/proftpd.pid
ScoreboardFile {w}/proftpd.scoreboard
DelayTable {w}/proftpd.delay
SystemLog {w}/proftpd.log
TransferLog none
WtmpLog off
UseReverseDNS off
ControlsEngine off
MaxInstances {MAX_SESSIONS}
DefaultRoot ~
RequireValidShell off
AuthPAM on
AuthPAMConfig {PAM_SERVICE}
AuthOrder mod_auth_pam.c* mod_auth_unix.c
PassivePorts {ctx.pasv[0]} {ctx.pasv[1]}
TimeoutIdle {IDLE_TIMEOUT_S}
TimeoutNoTransfer {IDLE_TIMEOUT_S}
AllowOverwrite on
Umask 022
""" + (_proftpd_tls(ctx) if ctx.tls else ""))
    version = ctx.unpacked.versions.get("proftpd-core", "?") if ctx.unpacked else "?"
    notes = ["PAM: pam_unix, SHA-512 crypt on every login (Debian's AuthOrder); "
             "mod_delay on (default); 1 process per session"]
    if ctx.tls:
        notes.append("TLS: mod_tls.so (proftpd-mod-crypto), TLSRequired on, data-connection "
                     "session reuse required (default), protocols and ciphers at defaults")
    return Plan("proftpd", version,
                [_peer_binary(ctx, "usr/sbin/proftpd"), "--nodaemon", "--config", str(conf)],
                _peer_env(ctx), notes=notes)


def _proftpd_tls(ctx: Context) -> str:
    """mod_tls from the unpacked tree (Debian: proftpd-mod-crypto), TLS required."""
    assert ctx.tls is not None and ctx.unpacked is not None
    modules = ctx.unpacked.binary("usr/lib/proftpd")
    if not (modules / "mod_tls.so").exists():
        raise TlsUnsupported("mod_tls.so not unpacked (Debian package proftpd-mod-crypto)")
    core = ctx.unpacked.versions.get("proftpd-core")
    crypto = ctx.unpacked.versions.get("proftpd-mod-crypto")
    if crypto is not None and crypto != core:
        raise TlsUnsupported(f"proftpd-mod-crypto {crypto} does not match proftpd-core {core}")
    return f"""\
ModulePath {modules}
LoadModule mod_tls.c
TLSEngine on
TLSLog {ctx.workdir}/proftpd-tls.log
TLSRSACertificateFile {ctx.tls.certificate}
TLSRSACertificateKeyFile {ctx.tls.key}
TLSRequired on
"""


def pureftpd_plan(ctx: Context) -> Plan:
    version = ctx.unpacked.versions.get("pure-ftpd", "?") if ctx.unpacked else "?"
    argv = [
        _peer_binary(ctx, "usr/sbin/pure-ftpd"),
        "--bind", f"{ctx.host},{ctx.port}",
        "--login", "pam",  # Debian's default; unix auth would refuse the nologin shell
        "--chrooteveryone", "--noanonymous", "--dontresolve",
        "--maxclientsnumber", str(MAX_SESSIONS), "--maxclientsperip", str(MAX_SESSIONS),
        "--passiveportrange", f"{ctx.pasv[0]}:{ctx.pasv[1]}",
        "--maxidletime", str(IDLE_TIMEOUT_S // 60), "--umask", "133:022",
        "--pidfile", str(ctx.workdir / "pure-ftpd.pid"), "--tls", "0",
    ]
    notes = ["PAM (Debian's default): pam_unix, SHA-512 crypt on every login; "
             "privsep: 2 processes per session"]
    if ctx.tls:
        problem = _pureftpd_tls_problem(argv[0], _peer_env(ctx))
        if problem:
            raise TlsUnsupported(problem)
        # 3: TLS required for login and for data connections. Same certificate and key.
        argv[-1:] = ["3", "--certfile", f"{ctx.tls.certificate},{ctx.tls.key}"]
        notes.append("TLS: --tls 3 (required for login and data), ciphers at defaults")
    return Plan("pure-ftpd", version, argv, _peer_env(ctx), notes=notes)


def _pureftpd_tls_problem(binary: str, env: dict[str, str]) -> str | None:
    """None if this pure-ftpd was built with TLS (--tls in its help, libssl linked)."""
    result = subprocess.run([binary, "--help"], capture_output=True, text=True, check=False,
                            env=dict(os.environ, **env), timeout=60)
    if "--tls" not in result.stdout + result.stderr or not _links_libssl(binary, env):
        return "pure-ftpd not built with TLS"
    return None


_OVERRIDE = re.compile(r"^([a-z_]+)\.([a-z_]+)=(.+)$")


def parse_overrides(items: list[str]) -> dict[tuple[str, str], str]:
    """'section.key=value' strings (value as TOML) to {(section, key): value}."""
    out: dict[tuple[str, str], str] = {}
    for item in items:
        match = _OVERRIDE.match(item.strip())
        if not match:
            raise ValueError(f"--ftpd-set wants SECTION.KEY=VALUE, got {item!r}")
        out[(match.group(1), match.group(2))] = match.group(3).strip()
    return out


def ftpd_settings(ctx: Context, users_file: Path) -> dict[str, dict[str, str]]:
    """The production settings under test (TOML literals), limits raised to the capacity
    workload like the peers', then the --ftpd-set overrides."""
    sections: dict[str, dict[str, str]] = {
        "server": {
            "workers": '"auto"',
            "listen": f'["{ctx.host}:{ctx.port}"]',
            "user": f'"{ctx.user.name}"',
            "group": f'"{ctx.user.name}"',
            "max_sessions": str(MAX_SESSIONS),
            "max_sessions_per_ip": "0",
            "idle_timeout": str(IDLE_TIMEOUT_S),
        },
        "passive": {"ports": f'"{ctx.pasv[0]}-{ctx.pasv[1]}"'},
        "users": {"file": f'"{users_file}"'},
    }
    if ctx.tls:  # session_reuse: the default ("require")
        sections["tls"] = {"certificate": f'"{ctx.tls.certificate}"',
                           "key": f'"{ctx.tls.key}"', "require": '"all"'}
    for (section, key), value in ctx.ftpd_overrides.items():
        sections.setdefault(section, {})[key] = value
    return sections


def render_toml(sections: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                     for name, values in sections.items())


def ftpd_plan(ctx: Context) -> Plan:
    if not ctx.ftpd_bin:
        raise RuntimeError("ftpd not found: pip install -e . (or pass --ftpd PATH)")
    users_file = ctx.workdir / FTPD_USERS_FILE
    subprocess.run(
        [ctx.ftpd_bin, "passwd", "-f", str(users_file), ctx.user.name,
         "--root", str(ctx.user.home), "--permissions", "elradfmwMT"],
        input=ctx.user.password + "\n", text=True, check=True, capture_output=True,
        timeout=60,
    )
    conf = ctx.workdir / "ftpd.toml"
    conf.write_text(render_toml(ftpd_settings(ctx, users_file)))
    check = subprocess.run([ctx.ftpd_bin, "check", "-c", str(conf)], capture_output=True,
                           text=True, check=False, timeout=60)
    if check.returncode != 0:
        raise RuntimeError(f"ftpd check refused the bench config: "
                           f"{(check.stderr or check.stdout).strip()[-800:]}")
    version = subprocess.run([ctx.ftpd_bin, "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout.strip() or "?"
    notes = ["workers = auto, dropped to the test user; virtual users file "
             f"({_hash_scheme(users_file)}); other settings at their defaults"]
    if ctx.tls:
        notes.append('TLS: require = "all" (login and data), session_reuse = "require" '
                     "(default), versions and ciphers at defaults")
    notes += [f"{section}.{key} = {value}"
              for (section, key), value in ctx.ftpd_overrides.items()]
    return Plan("ftpd", version.removeprefix("ftpd ").strip(),
                [ctx.ftpd_bin, "serve", "-c", str(conf)], notes=notes)


def _hash_scheme(users_file: Path) -> str:
    """The password hash scheme `ftpd passwd` wrote, e.g. '$scrypt$ln=15,r=8,p=1'."""
    match = re.search(r"(\$[a-z0-9-]+\$[^$\"]*)\$", users_file.read_text())
    return f"{match.group(1)} hash" if match else "hash scheme unknown"


PLANS: dict[str, Callable[[Context], Plan]] = {
    "ftpd": ftpd_plan,
    "vsftpd": vsftpd_plan,
    "proftpd": proftpd_plan,
    "pure-ftpd": pureftpd_plan,
}


# --- process life cycle --------------------------------------------------------------------

def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def read_banner(host: str, port: int, timeout: float) -> str:
    """Connect, read the full 220 greeting (possibly multi-line), send QUIT."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            lines = data.split(b"\r\n")
            if any(line.startswith(b"220 ") for line in lines[:-1]):
                sock.sendall(b"QUIT\r\n")
                return data.decode("latin-1")
            if any(line[:3].isdigit() and line[:3] != b"220" for line in lines[:-1]):
                break
        raise RuntimeError(f"no 220 greeting: {data[:200]!r}")


def _raise_nofile() -> None:
    """In the child before exec: soft = hard open-files limit (systemd LimitNOFILE style)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class RunningServer:
    """One started server. Stops by PID: the master, then any descendant left over."""

    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.log_path = workdir / f"{plan.name}.out"
        self._log = self.log_path.open("ab")
        env = dict(os.environ, **plan.env)
        self.proc = subprocess.Popen(
            plan.argv, env=env, cwd=workdir,
            stdin=self._log if plan.stdin_is_log else subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the harness only
            preexec_fn=_raise_nofile,
        )
        self.pid = self.proc.pid
        self._known: dict[int, int | None] = {}

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_ready(self, host: str, port: int, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        last_error = "not tried"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.plan.name} exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                return read_banner(host, port, timeout=5)
            except (OSError, RuntimeError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.plan.name} not ready after {timeout:.0f} s: {last_error}")

    def remember_tree(self) -> None:
        """Note the current descendants (and their start times) so stop() can reach them
        even after the master is gone and they were re-parented."""
        for pid in system.process_tree(self.pid):
            self._known.setdefault(pid, system.start_time(pid))

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.returncode is None:
            self.remember_tree()
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 5
        for pid, started in self._known.items():
            if pid == self.pid or started is None:
                continue
            while system.start_time(pid) == started and time.monotonic() < deadline:
                time.sleep(0.05)  # sessions of a stopped master usually exit by themselves
            if system.start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


def find_ftpd(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    return shutil.which("ftpd")
