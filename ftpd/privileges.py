"""Every operation that needs root (or a capability) lives here.

The supervisor binds the listening sockets while it is privileged; workers
call `drop()` right after fork, before they touch any client data.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import logging
import os
import pwd
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .settings import Endpoint

log = logging.getLogger("ftpd.privileges")

LISTEN_BACKLOG = 1024  # a storm of logins must not lose SYNs to a short queue


class StartupError(Exception):
    """The daemon cannot start; the message names the setting to fix."""


class BindError(StartupError):
    """A listening address cannot be bound (perhaps only for now)."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def bind(endpoint: Endpoint, dual_stack: bool, origin: str,
         key: str = "server.listen") -> socket.socket:
    """A listening socket on `endpoint`; errors name the setting and the fix."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        why = {
            errno.EADDRINUSE: "is already in use by another process",
            errno.EACCES: "needs root or CAP_NET_BIND_SERVICE (ports below 1024)",
            errno.EADDRNOTAVAIL: "is not an address of this host",
        }.get(err.errno or 0, f"cannot be bound: {err.strerror}")
        raise BindError(f"{origin}: {key}: {endpoint} {why}") from None
    return sock


def bind_all(endpoints: Iterable[Endpoint], origin: str,
             labels: dict[Endpoint, tuple[str, str]] | None = None,
             ) -> dict[Endpoint, socket.socket]:
    """Bind every endpoint, or none: on failure the ones bound are closed.

    Errors name `origin` and server.listen, or the (origin, key) in `labels`.
    """
    endpoints = list(endpoints)
    v4_ports = {e.port for e in endpoints if ":" not in e.host}
    bound: dict[Endpoint, socket.socket] = {}
    try:
        for endpoint in endpoints:
            # "[::]:21" alone serves IPv4 too; beside "0.0.0.0:21" it must not.
            dual = endpoint.host == "::" and endpoint.port not in v4_ports
            bound[endpoint] = bind(endpoint, dual, *(labels or {}).get(
                endpoint, (origin, "server.listen")))
    except StartupError:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def worker_account(user: str, group: str, origin: str) -> Account | None:
    """The account workers switch to, or None when there is nothing to drop."""
    if os.geteuid() != 0:
        return None
    if user == "root":
        log.warning("server.user is root: workers keep full privileges; set an "
                    "unprivileged account for production")
        return None
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise StartupError(f"{origin}: server.user: no such user {user!r}; create it "
                           "(e.g. `useradd --system ftpd`) or set another") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(f"{origin}: server.group: no such group {group!r}") from None
    return Account(user, uid, gid)


def dropper(account: Account | None) -> Callable[[], None]:
    """A function that, called in a worker, drops to `account` for good."""
    def drop() -> None:
        if account is None:
            return
        os.setgroups([account.gid])
        os.setgid(account.gid)
        os.setuid(account.uid)
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise RuntimeError("privileges could be regained after dropping them")
    return drop


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


# --- session jails (`[users] isolation = "process"`, see isolation.py)

def enter_jail(root: str, uid: int, gid: int, groups: Sequence[int]) -> None:
    """chroot(2) into `root` and become uid/gid/groups for good.

    Called in a session process, as root, after everything that needs the
    host's files (name service, log sockets) is open. Raises if any step
    fails or if root could be regained afterwards.
    """
    if uid == 0:
        raise RuntimeError("refusing to jail a session as uid 0: root can leave a chroot")
    os.chroot(root)
    os.chdir("/")  # no working directory outside the jail
    os.setgroups(list(groups))
    os.setgid(gid)  # as root: real, effective and saved ids
    os.setuid(uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or \
            sorted(set(os.getgroups())) != sorted(set(groups)):
        raise RuntimeError("credentials differ from the ones set")
    for attempt in (lambda: os.setuid(0), lambda: os.seteuid(0), lambda: os.setgroups([0]),
                    lambda: os.chroot("/")):  # the last one needs CAP_SYS_CHROOT
        try:
            attempt()
        except PermissionError:
            continue
        raise RuntimeError("a privileged operation still succeeds after the drop")


# --- privileged data source ports (`[active] connect_from_port_20`)

class PortBinder:
    """The worker's end of a helper process that binds privileged source ports.

    Workers run unprivileged, but RFC 959 active-mode data connections come
    from the control port minus one (20 for 21), below 1024. As in vsftpd's
    privilege separation, a tiny process forked *before* the worker drops its
    privileges keeps them for one job: bind a TCP socket to (local address,
    allowed port) and hand it back over a socket pair (SCM_RIGHTS). It binds
    nothing else, never listens or connects, and exits when the worker's end
    closes. The worker then connects the socket itself.
    """

    TIMEOUT = 2.0  # the helper only does socket()+bind(): microseconds when healthy

    def __init__(self, sock: socket.socket, pid: int, ports: frozenset[int]) -> None:
        self._sock = sock
        self.pid = pid
        self.ports = ports

    def bind(self, family: int, host: str, port: int) -> socket.socket:
        """A socket bound to (host, port); raises OSError like bind() would.

        Synchronous on purpose: a local round trip to an idle helper is far
        shorter than anything else a PORT command does, and TIMEOUT bounds it.
        """
        self._sock.settimeout(self.TIMEOUT)
        self._sock.send(f"{family} {port} {host}".encode("ascii"))
        data, fds, _flags, _addr = socket.recv_fds(self._sock, 64, 1)
        if fds:
            return socket.socket(fileno=fds[0])
        code = int(data or b"0") or errno.EIO
        raise OSError(code, os.strerror(code))

    def close(self) -> None:
        """Close our end (the helper exits on EOF) and reap the helper."""
        self._sock.close()
        for _ in range(100):
            try:
                pid, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def start_port_binder(ports: Iterable[int]) -> PortBinder:
    """Fork the bind helper; call while still privileged (before drop())."""
    allowed = frozenset(ports)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            ours.close()
            _serve_binds(theirs, allowed)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    theirs.close()
    return PortBinder(ours, pid, allowed)


def _serve_binds(sock: socket.socket, allowed: frozenset[int]) -> None:
    """Body of the helper: answer bind requests until the worker goes away."""
    # Keep only our socket: no listener, log file or client connection of the
    # worker may live on in a root process.
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) != sock.fileno():
            try:
                os.close(int(name))
            except OSError:
                pass  # the directory's own fd, already gone
    # A stop is the worker's business: we exit when it closes its end, so a
    # draining worker can still open data connections (systemd signals the
    # whole cgroup).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    while True:
        request = sock.recv(512)
        if not request:
            return
        try:
            bound = _bind_requested(request, allowed)
        except OSError as err:
            sock.send(str(err.errno or errno.EIO).encode("ascii"))
            continue
        try:
            socket.send_fds(sock, [b"ok"], [bound.fileno()])
        finally:
            bound.close()


def _bind_requested(request: bytes, allowed: frozenset[int]) -> socket.socket:
    try:
        family_text, port_text, host = request.decode("ascii").split(" ", 2)
        family, port = int(family_text), int(port_text)
        ipaddress.ip_address(host)
    except ValueError:
        raise OSError(errno.EINVAL, "malformed request") from None
    if family not in (socket.AF_INET, socket.AF_INET6) or port not in allowed:
        raise OSError(errno.EPERM, "port not allowed")
    from .active import bind_source  # the same bind an unprivileged worker would do

    return bind_source(family, host, port)
