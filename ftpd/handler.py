"""The FTP session handler: pyftpdlib's FTPHandler with ftpd's policies.

pyftpdlib keeps the protocol; this layer adds what a daemon needs: session
ids and structured events, password checks off the event loop, passive ports
from the worker's slice, confinement fixes (STOU, NUL bytes) and the
behaviour during drain. A fresh subclass is built per configuration by
`build_handler`, so nothing global is mutated.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyftpdlib.handlers import FTPHandler
from pyftpdlib.log import logger as pyftpdlib_logger

from .auth import VirtualAuthorizer
from .bans import BanTable
from .datachannel import DataChannelPolicy, handler_attributes
from .filesystem import ConfinedFS
from .limits import Limits, SessionTable
from .logging import event
from .offload import Offloader
from .passive import RangePassiveDTP
from .transfer import DataChannel
from .userpolicy import UserPolicy

log = logging.getLogger("ftpd.session")

_EVENT_COMMANDS = {"DELE": "delete", "RMD": "rmdir", "XRMD": "rmdir", "MKD": "mkdir",
                   "XMKD": "mkdir", "RNTO": "rename", "SITE CHMOD": "chmod"}


@dataclass
class WorkerRuntime:
    """Per-worker state shared by the sessions of one worker process."""

    worker: int
    offloader: Offloader
    table: SessionTable | None = None  # daemon-wide session counts
    limits: Limits | None = None
    bans: BanTable | None = None
    report: Callable[[str], None] | None = None  # a message to the supervisor
    sessions: set[Any] = field(default_factory=set)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    stopping: bool = False
    isolation: Any = None  # isolation.IsolatedSessions when [users] isolation = "process"

    def transfers(self) -> int:
        return sum(1 for s in self.sessions if s.data_channel is not None)


class SessionHandler(UserPolicy, DataChannelPolicy, FTPHandler):
    """One control connection. Class attributes are set by build_handler()."""

    runtime: WorkerRuntime
    authorizer: VirtualAuthorizer
    masquerade_ip: str | None = None
    passive_dtp = RangePassiveDTP
    dtp_handler = DataChannel
    abstracted_fs = ConfinedFS
    use_sendfile = True

    def __init__(self, conn: Any, server: Any, ioloop: Any = None) -> None:
        self.session_id = secrets.token_hex(4)
        self._verifying = False
        self._counted_ip: str | None = None  # claimed in the daemon-wide table
        self._counted_user: str | None = None
        super().__init__(conn, server, ioloop=ioloop)

    def client_ip(self) -> str:
        """The client's address, with IPv4-mapped IPv6 shown as IPv4."""
        ip = str(self.remote_ip)
        return ip[7:] if ip.startswith("::ffff:") else ip

    def handle(self) -> None:
        bans = self.runtime.bans
        if bans is not None and (left := bans.banned_for(self.client_ip())):
            self._event("refused", "connection refused: address banned", logging.WARNING,
                        reason="banned", ban_seconds_left=int(left))
            self.respond(f"421 Too many failed logins from your address; try again in "
                         f"{int(left) + 1} seconds.")
            self.close_when_done()
            return
        table, limits = self.runtime.table, self.runtime.limits
        if table is not None and limits is not None:
            why = table.open_session(self.client_ip(), limits)
            if why:
                self._event("refused", f"connection refused: {why}", logging.WARNING, reason=why)
                self.respond(f"421 {why[0].upper()}{why[1:]}; try again later.")
                self.close_when_done()
                return
            self._counted_ip = self.client_ip()
        super().handle()

    def _release(self) -> None:
        table = self.runtime.table
        if table is not None and self._counted_user is not None:
            table.release_user(self._counted_user)
        if table is not None and self._counted_ip is not None:
            table.close_session(self._counted_ip)
        self._counted_ip = self._counted_user = None

    def flush_account(self) -> None:
        if self.runtime.table is not None and self._counted_user is not None:
            self.runtime.table.release_user(self._counted_user)
            self._counted_user = None
        super().flush_account()

    # --- session life cycle

    def on_connect(self) -> None:
        self.runtime.sessions.add(self)
        self._event("connect", f"session opened from {self.remote_ip}")

    def close(self) -> None:
        if not self._closed:
            self._release()
        if not self._closed and self in self.runtime.sessions:
            self.runtime.sessions.discard(self)
            self._event("disconnect", "session closed",
                        duration_ms=int((time.time() - self.started) * 1000),
                        **self.summary_fields())
        super().close()

    def summary_fields(self) -> dict[str, Any]:
        """Extra fields for the disconnect event (the TLS handler adds its own)."""
        return {}

    def handle_timeout(self) -> None:
        self._event("idle_timeout", "session idle too long, closing")
        super().handle_timeout()

    def idle(self) -> bool:
        """True when no transfer is running or being set up."""
        return not (self.data_channel or self._dtp_acceptor or self._dtp_connector
                    or self._in_dtp_queue or self._out_dtp_queue or self._verifying)

    def shut_down(self) -> None:
        """Close now with 421 (called at stop once the session is idle)."""
        if not self._closed:
            self.respond("421 Server shutting down, closing control connection.")
            self.close_when_done()

    def _on_dtp_close(self) -> None:
        super()._on_dtp_close()
        if self.runtime.stopping and self.idle():
            self.shut_down()

    # --- authentication, verified in a thread

    def ftp_PASS(self, line: str) -> None:
        if self.authenticated:
            self.respond("503 User already authenticated.")
            return
        if not self.username:
            self.respond("503 Login with USER first.")
            return
        username = self.username
        self._verifying = True
        self.del_channel()  # read no further commands until the password is checked
        self.runtime.offloader.submit(
            self.authorizer.verify, (username, line),
            lambda ok: self._on_verified(username, line, ok))

    def _on_verified(self, username: str, password: str, ok: Any) -> None:
        self._verifying = False
        if self._closed:
            return
        self.add_channel()
        table, limits = self.runtime.table, self.runtime.limits
        if ok is True and table is not None and limits is not None:
            if not table.claim_user(username, self.user_session_limit(username, limits.per_user)):
                self._event("refused", f"too many sessions for {username!r}", logging.WARNING,
                            reason="too many sessions for this user")
                self.respond("421 Too many sessions for this user; close one and retry.")
                self.close_when_done()
                return
            self._counted_user = username
        if ok is True:
            if self.runtime.isolation is not None:
                # Its own jailed process calls complete_login() (isolation.py).
                self.runtime.isolation.hand_over(self, username)
            else:
                self.complete_login(username, self.authorizer.get_home_dir(username))
            return
        if isinstance(ok, BaseException):
            log.error("password check for %r failed: %r", username, ok)
        self._event("login_failed", f"login failed for {username!r}", logging.WARNING)
        self.runtime.counters["login_failed"] += 1
        if self.runtime.report is not None:
            self.runtime.report(f"fail {self.client_ip()}")
        self.handle_auth_failed("Authentication failed.", "")

    def complete_login(self, username: str, home: str, **fields: Any) -> None:
        """The 230 reply and the session's file system rooted at `home`."""
        self.handle_auth_success(home, "", self.authorizer.get_msg_login(username))
        self.apply_user_settings(username)
        self._event("login", f"login of {username!r}", **fields)

    # --- passive mode

    def passive_address(self) -> str | None:
        """The address to advertise in 227 replies for this client (see nat.py)."""
        if self.passive_addresses is not None:
            return self.passive_addresses.address_for(self.remote_ip,
                                                      self.socket.getsockname()[0])
        return self.masquerade_ip

    def count(self, name: str) -> None:
        self.runtime.counters[name] += 1

    # --- commands pyftpdlib gets wrong for a confined server

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if "\0" in line:
            self.respond("501 NUL bytes are not allowed in commands.")
            return
        super().pre_process_command(line, cmd, arg)

    def ftp_STOU(self, line: str) -> Any:
        # pyftpdlib skips the root check for STOU (a link in the home would
        # let a user write anywhere); check the directory it will write into.
        target = self.fs.ftp2fs(line) if line else self.fs.ftp2fs(self.fs.cwd)
        directory = os.path.dirname(target) if line else target
        if not self.fs.validpath(directory):
            self.respond("550 Path is outside the user's root directory.")
            return None
        return super().ftp_STOU(line)

    # --- logging: structured events instead of pyftpdlib's free text

    def _event(self, name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
        event(name, message, level, session=self.session_id, user=self.username or None,
              remote_addr=self.remote_ip, remote_port=self.remote_port,
              worker=self.runtime.worker, **fields)

    def log_transfer(self, cmd: str, filename: str, receive: bool, completed: bool,
                     elapsed: float, bytes: int) -> None:
        name = "upload" if receive else "download"
        state = "completed" if completed else "aborted"
        self._event(name, f"{name} {state}", path=self.upload_path(filename),
                    bytes=bytes, duration_ms=int(elapsed * 1000), completed=str(completed).lower(),
                    command=cmd, mode="ascii" if self._current_type == "a" else "binary")

    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None:
        name = _EVENT_COMMANDS.get(cmd)
        if name and self.fs is not None and 200 <= respcode < 300:
            self._event(name, f"{name} done", path=self.fs.fs2ftp(arg) if arg else None)

    def log(self, msg: str, logfun: Any = None) -> None:
        level = logging.WARNING if logfun in (pyftpdlib_logger.warning, pyftpdlib_logger.error) \
            else logging.DEBUG
        log.log(level, "%s session=%s remote_addr=%s", msg, self.session_id, self.remote_ip)

    def logline(self, msg: str, logfun: Any = None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s session=%s", msg, self.session_id)

    def logerror(self, msg: str) -> None:
        log.error("%s session=%s", msg, self.session_id)

    def log_exception(self, instance: Any) -> None:
        log.exception("internal error in session %s (%r); closing it", self.session_id,
                      type(instance).__name__)


def build_handler(config: Any, runtime: WorkerRuntime, authorizer: VirtualAuthorizer,
                  passive_ports: range, masquerade_ip: str | None) -> type[SessionHandler]:
    """A SessionHandler subclass configured for one worker and one configuration."""
    return type("ConfiguredSessionHandler", (SessionHandler,), {
        "runtime": runtime,
        "authorizer": authorizer,
        "banner": config.server.banner,
        "timeout": config.server.idle_timeout or None,
        "passive_ports": passive_ports,
        "masquerade_ip": masquerade_ip,
        "upload_umask": int(config.uploads.umask, 8),
        "atomic_uploads": config.uploads.atomic,
        **handler_attributes(config),  # PASV/EPSV/PORT/EPRT policies (datachannel.py)
    })
