"""Every operation that needs root (or a capability) lives here.

The supervisor binds the listening sockets while it is privileged; workers
call `drop()` right after fork, before they touch any client data.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import resource
import socket
from collections.abc import Callable, Iterable
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
