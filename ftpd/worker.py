"""A worker process: its own IOLoop and FTPServer on the inherited listeners.

Runs in a child forked by the supervisor. Signals are not handled in signal
handlers: the wake-up fd carries the signal number into the event loop,
which dispatches it like any other event.

Signals from the supervisor:
    SIGTERM  stop: accept no more, let running transfers finish, close idle
             sessions with 421, exit (at most shutdown_timeout).
    SIGUSR2  retire (reload): accept no more, keep serving the sessions we
             have until their clients quit (at most shutdown_timeout).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from . import datachannel, isolation
from . import logging as ftpd_logging
from .auth import Anonymous, VirtualAuthorizer
from .bans import BanTable
from .handler import WorkerRuntime, build_handler
from .limits import Limits, SessionTable
from .offload import Offloader, SocketReader
from .users import User

log = logging.getLogger("ftpd.worker")

EXIT_BOOT_FAILED = 3  # tells the supervisor to halt instead of respawning
HEARTBEAT_INTERVAL = 1.0
BACKLOG = 1024


@dataclass
class WorkerSpec:
    """Everything a worker needs, prepared by the supervisor before fork."""

    index: int
    generation: int
    config: Any
    listeners: list[socket.socket]
    users: dict[str, User]
    passive_ports: range
    masquerade_ip: str | None
    report: socket.socket  # to the supervisor: "ready" and heartbeats
    master_pid: int
    tls: Any = None  # tls.TlsSetup when [tls] certificate is set
    sessions: SessionTable | None = None  # daemon-wide limits; None in unit tests
    bans: BanTable | None = None
    data: Any = None  # datachannel.DataStart: resolved masquerade names, port-20 helper
    session_account: Any = None  # privileges.Account virtual users' jailed sessions run as


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ioloop = IOLoop()  # fresh per worker: never share an epoll set across processes
        self.offloader = Offloader(self.ioloop)
        self.runtime = WorkerRuntime(
            worker=spec.index, offloader=self.offloader, table=spec.sessions,
            bans=spec.bans, report=self._send,
            limits=Limits(spec.config.server.max_sessions, spec.config.server.max_sessions_per_ip,
                          spec.config.server.max_sessions_per_user))
        anonymous = spec.config.anonymous
        authorizer = VirtualAuthorizer(
            spec.config.users.file, spec.users, spec.config.users.auth_cache_seconds,
            Anonymous(anonymous.root, os.path.join(anonymous.root, anonymous.upload_dir)
                      if anonymous.upload_dir else "") if anonymous.enabled else None)
        if spec.config.users.system:
            from .pam import SystemAuthorizer  # loads libpam

            authorizer = SystemAuthorizer.from_config(spec.config, authorizer)
        if spec.config.users.isolation == "process":
            self.runtime.isolation = isolation.IsolatedSessions(spec.config,
                                                                spec.session_account)
        handler = build_handler(spec.config, self.runtime, authorizer, spec.passive_ports,
                                spec.masquerade_ip)
        # 227 addresses per client (re-resolved in the background), port-20 helper, stats.
        self.passive_refresher = datachannel.start_worker(
            handler, spec.config, spec.data, self.ioloop, self.offloader, self.runtime)
        if spec.tls is None:
            def pick(sock: socket.socket) -> type[Any]:
                return handler
        else:
            from .tls_handler import handler_for_listener  # OpenSSL only when TLS is on

            pick = handler_for_listener(handler, spec.tls)  # explicit or implicit FTPS
        self.servers = [FTPServer(sock, pick(sock), ioloop=self.ioloop, backlog=BACKLOG)
                        for sock in spec.listeners]
        for server in self.servers:
            server.max_cons = 0  # limits are enforced per session, not per socket
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._signal_writer = writer
        self._signals = SocketReader(reader, self.ioloop, self._on_signal_bytes)
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT,
                       signal.SIGHUP):
            signal.signal(signum, _ignore)  # the byte on the wake-up fd does the work
        if self.runtime.isolation is not None:
            signal.signal(signal.SIGCHLD, _ignore)  # a session process ended: reap it
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._deadline: float | None = None
        self.ioloop.call_every(HEARTBEAT_INTERVAL, self._heartbeat)

    def serve(self) -> None:
        self._send("ready")
        # pyftpdlib's first poll waits with no timeout; a wake-up byte makes it
        # return at once so the scheduler (heartbeats) runs from the start.
        self._signal_writer.send(b"\0")
        log.debug("worker %d (generation %d) serving", self.spec.index, self.spec.generation)
        self.ioloop.loop()

    # --- supervisor link

    def _send(self, message: str) -> None:
        try:
            self.spec.report.send(message.encode() + b"\n")
        except OSError:
            pass  # the supervisor is gone; the heartbeat notices and stops us

    def _heartbeat(self) -> None:
        if os.getppid() != self.spec.master_pid:
            log.error("supervisor %d died; worker %d exiting", self.spec.master_pid,
                      self.spec.index)
            self.ioloop.close()
            return
        sessions = len(self.runtime.sessions)
        if self.runtime.isolation is not None:
            self.runtime.isolation.reap()  # in case a SIGCHLD was coalesced
            sessions += self.runtime.isolation.count()
        self._send(f"hb {sessions} {self.runtime.transfers()}")

    # --- stop and retire

    def _on_signal_bytes(self, data: bytes) -> None:
        for signum in data:  # each byte is a signal number; 0 is the start-up nudge
            if signum:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self._begin_drain(stopping=True)
        elif signum == signal.SIGUSR2:
            self._begin_drain(stopping=False)
        elif signum == signal.SIGUSR1:
            ftpd_logging.reopen()
        elif signum == signal.SIGCHLD and self.runtime.isolation is not None:
            self.runtime.isolation.reap()
        # SIGINT/SIGHUP reach the whole process group from a terminal: the
        # supervisor decides what they mean and tells us.

    def _begin_drain(self, stopping: bool) -> None:
        for server in self.servers:
            if not server._closed:
                server.close()  # our copy of the listener only; new workers keep accepting
        if self._deadline is None:
            self._deadline = time.monotonic() + self.spec.config.server.shutdown_timeout
        if stopping and not self.runtime.stopping:
            self.runtime.stopping = True
            for session in list(self.runtime.sessions):
                if session.idle():
                    session.shut_down()
        if self.runtime.isolation is not None:
            self.runtime.isolation.drain(stopping)  # session processes do the same
        self.ioloop.call_later(0.1, self._check_drained)

    def _check_drained(self) -> None:
        isolated = self.runtime.isolation
        if not self.runtime.sessions and not (isolated is not None and isolated.count()):
            self.ioloop.close()
        elif self._deadline is not None and time.monotonic() >= self._deadline:
            log.warning("worker %d: shutdown_timeout reached, closing %d sessions",
                        self.spec.index, len(self.runtime.sessions))
            for session in list(self.runtime.sessions):
                session.respond("421 Server shutting down.")
                session.close()
            if isolated is not None:
                isolated.stop_all()  # they had the same deadline; kill what is left
            self.ioloop.close()
        else:
            self.ioloop.call_later(0.2, self._check_drained)


def _ignore(signum: int, frame: Any) -> None:
    """Installed so the signal is delivered (and written to the wake-up fd)."""


def run(spec: WorkerSpec, drop_privileges: Any) -> int:
    """Body of a worker process; returns its exit status."""
    try:
        drop_privileges()
        # Files are created with explicit modes ([uploads] umask, per user).
        os.umask(0)
        worker = Worker(spec)
    except Exception:
        log.exception("worker %d failed to start", spec.index)
        return EXIT_BOOT_FAILED
    try:
        worker.serve()
    except Exception:
        log.exception("worker %d crashed", spec.index)
        return 1
    return 0
