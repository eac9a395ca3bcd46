"""FTPS sessions: pyftpdlib's TLS_FTPHandler with ftpd's policies.

pyftpdlib keeps the AUTH/PBSZ/PROT state machine and the TLS plumbing; this
layer adds what it lacks:

* `[tls] require` and the per-user override, answered with RFC 4217 codes:
  530 to USER/PASS before AUTH TLS, 521 to a transfer with PROT C;
* implicit FTPS: the handshake starts at accept, the 220 banner follows it,
  and PBSZ 0 / PROT P are in force from the start;
* data-connection session reuse (vsftpd's require_ssl_reuse): every TLS
  control connection gets an SSL context of its own, so a data connection
  that resumed a session resumed *this* session's (see tls.py); the check
  is made when the data handshake ends, before a byte of the file moves;
* a handshake deadline, so a client that stops halfway holds no slot;
* events with the TLS version, cipher and reuse counts.

The worker derives one handler class per listener from the per-config
SessionHandler subclass (`handler_for_listener`); the class attributes say
whether the listener is implicit and which address it is.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.handlers.ftps.data import TLS_DTPHandler
from pyftpdlib.log import logger as pyftpdlib_logger

from . import tls as tls_mod
from .handler import SessionHandler
from .tls import TlsSetup
from .transfer import FileErrorReply

log = logging.getLogger("ftpd.tls")

_RESET = (errno.ECONNRESET, errno.ECONNABORTED)
# Commands that open a data connection; PASV/PORT only prepare one.
_TRANSFER_COMMANDS = frozenset({"LIST", "NLST", "MLSD", "RETR", "STOR", "STOU", "APPE"})

# How much one writable event may encrypt and send on a TLS data connection.
# pyftpdlib makes one 64 KiB SSL_write per event, so a download pays an
# epoll round trip per 64 KiB; writing on while the socket takes it made
# FTPS RETR about 40 % faster (bench/RESULTS.md), and the cap keeps other
# sessions on the worker served while it does.
TLS_SEND_BUDGET = 1024 * 1024

REPLY_LOGIN_NEEDS_TLS = ("530 Login refused: this server requires TLS. Send AUTH TLS first "
                         "(e.g. curl --ssl-reqd, lftp: set ftp:ssl-force true).")
REPLY_DATA_NEEDS_PROT_P = ("521 Data connection cannot be opened with this PROT setting: "
                           "this server requires encrypted data; send PBSZ 0 and PROT P.")
REPLY_REUSE_REQUIRED = ("522 TLS session reuse required: the data connection must resume the "
                        "TLS session of the control connection; enable session reuse in the "
                        "client.")
REPLY_UPLOAD_RESET = ("426 Upload aborted: the client reset the data connection after {} "
                      "bytes, so the file may be incomplete; send it again.")
REPLY_DATA_HANDSHAKE_ABORTED = ("426 The data connection closed during its TLS handshake; "
                                "transfer aborted, retry it.")
REPLY_DATA_HANDSHAKE_FAILED = ("522 TLS handshake on the data connection failed; check the "
                               "client's TLS settings (version, ciphers).")


def _ssl_reason() -> str:
    """The OpenSSL reason of the exception being handled, for logs."""
    err = sys.exc_info()[1]
    if isinstance(err, SSL.Error) and err.args and isinstance(err.args[0], list):
        reasons = [str(e[2]) for e in err.args[0] if len(e) > 2]
        if reasons:
            return "; ".join(reasons)
    return repr(err) if err else "unknown"


class _HandshakeDeadline:
    """Closes a channel whose TLS handshake is not finished in time.

    pyftpdlib only bounds a handshake by the idle timeout (minutes), and the
    data channel's stall timer does not run before the transfer starts.
    """

    def __init__(self, channel: Any, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._channel = channel
        self._on_expiry = on_expiry
        self._timer = channel.ioloop.call_later(seconds, self._expired,
                                                _errback=channel.handle_error)

    def _expired(self) -> None:
        if not self._channel._closed and self._channel._ssl_accepting:
            self._on_expiry()

    def cancel(self) -> None:
        if not self._timer.cancelled:
            self._timer.cancel()


class _ResetAwareDTP(DTPHandler):
    """Notes a connection reset under the TLS layer (placed after it in the MRO).

    pyftpdlib ends an upload on ECONNRESET exactly like on a clean close and
    answers 226, but a reset means the client's kernel threw away what it had
    not sent yet. It happens for real with TLS 1.3: the server sends session
    tickets on the data connection, an uploading client that never reads them
    closes with unread data, and its kernel resets the connection (lftp with
    GnuTLS lost up to half of a 200 KB upload in our tests; curl #6149).
    OpenSSL sends the tickets unconditionally and pyOpenSSL exposes no
    SSL_set_num_tickets, so the honest answer is a 426 instead of a 226.
    """

    _reset = False

    def recv(self, buffer_size: int) -> bytes:
        try:
            return super().recv(buffer_size)  # type: ignore[no-any-return]
        except SSL.SysCallError as err:
            if err.args and err.args[0] in _RESET:
                self._reset = True
            raise  # SSLConnectionMixin.recv turns it into handle_close()

    def handle_close(self) -> None:
        # The IOLoop also calls this directly, for an error event that comes
        # without a read event; the socket's pending error tells a reset then.
        # (A reset racing unread data is sometimes reported by the kernel as
        # a plain EOF: that looks like a close without close_notify, which is
        # accepted, so not every truncation can be caught here.)
        if self.receive and not self._closed:
            try:
                error = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except (OSError, SSL.Error):
                error = 0
            if error in _RESET:
                self._reset = True
        super().handle_close()


class TlsDataChannel(FileErrorReply, TLS_DTPHandler, _ResetAwareDTP):
    """A data connection; with PROT P it is checked for session reuse.

    Nothing is written until the handshake is finished and checked. pyftpdlib
    pushes the file as soon as the connection is accepted, and an SSL_write
    during the handshake completes it *inside OpenSSL* and sends the data at
    once, before the handshake callback could refuse the connection (seen
    with TLS 1.2: a client that did not resume still received the file).
    Holding the pushes back also keeps the channel off WRITE events during the
    handshake, where pyftpdlib would otherwise retry the handshake on every
    writable event until the client answers (a busy loop for one round trip).
    """

    cmd_channel: TlsSessionHandler

    def __init__(self, sock: socket.socket, cmd_channel: TlsSessionHandler) -> None:
        self._deadline: _HandshakeDeadline | None = None
        self._checked = False  # handshake finished and accepted by on_data_tls()
        self._held: list[Callable[[], None]] = []  # pushes waiting for the check
        self.tls_state = "clear"  # then "reused" or "new"
        super().__init__(sock, cmd_channel)

    def _holding(self) -> bool:
        return self._ssl_requested and not self._checked

    def push(self, data: bytes) -> None:
        if self._holding():
            self._initialized = True
            self._held.append(functools.partial(super().push, data))
        else:
            super().push(data)

    def push_with_producer(self, producer: Any) -> None:
        if self._holding():
            self._initialized = True
            self._held.append(functools.partial(super().push_with_producer, producer))
        else:
            super().push_with_producer(producer)

    def initiate_send(self) -> None:
        if getattr(self, "write_limit", 0):  # throttled: one write per event, as pyftpdlib
            super().initiate_send()
            return
        budget = TLS_SEND_BUDGET
        while budget > 0:
            before = self.tot_bytes_sent
            super().initiate_send()
            sent = self.tot_bytes_sent - before
            if (sent <= 0 or self._closed or not self.producer_fifo
                    or self._ssl_want_write or self._ssl_want_read):
                break
            budget -= sent

    def close_when_done(self) -> None:
        if self._holding():
            self._held.append(super().close_when_done)
        else:
            super().close_when_done()

    def release(self) -> None:
        """The check passed: send what was pushed meanwhile."""
        self._checked = True
        held, self._held = self._held, []
        for call in held:
            if self._closed:
                break
            call()

    def secure_connection(self, ssl_context: SSL.Context) -> None:
        super().secure_connection(ssl_context)
        if self._ssl_accepting:
            self._deadline = _HandshakeDeadline(
                self, self.cmd_channel.tls_setup.handshake_timeout, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self.cmd_channel.tls_event("tls_data_timeout", "TLS handshake on the data connection "
                                   "not finished in time; closing it", logging.INFO)
        self._resp = (REPLY_DATA_HANDSHAKE_FAILED, pyftpdlib_logger.info)
        self._error = True  # nothing to shut down cleanly: close at once
        self.close()

    def handle_ssl_established(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self.cmd_channel.on_data_tls(self)

    def handle_failed_ssl_handshake(self) -> None:
        self.cmd_channel.tls_event("tls_data_failed", "TLS handshake on the data connection "
                                   "failed", logging.INFO, reason=_ssl_reason())
        self._resp = (REPLY_DATA_HANDSHAKE_FAILED, pyftpdlib_logger.info)
        self._error = True
        self.close()

    def refuse(self, reply: str) -> None:
        """Close before any data moved and answer `reply` on the control connection."""
        # With a clean TLS shutdown the client reads an orderly EOF and then
        # this reply; a bare close makes most clients fail on the data socket
        # and leave the reply unread on the control connection.
        self._resp = (reply, pyftpdlib_logger.debug)  # the event above says it
        self.close()

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if not self._closed and self._reset and self.receive:
            self.transfer_finished = False
            self._resp = (REPLY_UPLOAD_RESET.format(self.get_transmitted_bytes()),
                          pyftpdlib_logger.debug)
            self.cmd_channel.tls_event("upload_reset", "the client reset the data connection "
                                       "during an upload; answered 426", logging.WARNING,
                                       bytes=self.get_transmitted_bytes())
        if not self._closed and self._holding():
            # Closed before the handshake was checked: whatever pyftpdlib
            # concluded (an empty upload counts as complete), nothing moved.
            self.transfer_finished = False
            if not self._resp or self._resp[0].startswith("226"):
                self._resp = (REPLY_DATA_HANDSHAKE_ABORTED, pyftpdlib_logger.debug)
        self._held = []
        super().close()


class TlsSessionHandler(SessionHandler, TLS_FTPHandler):
    """SessionHandler with FTPS. Class attributes are set by handler_for_listener()."""

    tls_setup: TlsSetup
    worker_context: SSL.Context | None = None  # shared by sessions when reuse is off
    ssl_context: SSL.Context | None  # this session's (TLS_FTPHandler reads it)
    implicit_tls = False
    listener = ""
    dtp_handler = TlsDataChannel

    def __init__(self, conn: Any, server: Any, ioloop: Any = None) -> None:
        self._deadline: _HandshakeDeadline | None = None
        self._tls_fields: dict[str, str] = {}
        self._data_tls: collections.Counter[str] = collections.Counter()
        self._held_output: list[str] | None = None  # see handle()
        super().__init__(conn, server, ioloop=ioloop)

    # --- contexts

    @classmethod
    def get_ssl_context(cls) -> SSL.Context | None:
        # Called by FTPServer and by TLS_FTPHandler.__init__ for every
        # connection; with reuse checks the session's own context is only
        # made when TLS starts (_session_context).
        return cls.worker_context

    def _session_context(self) -> SSL.Context:
        if self.ssl_context is None:
            self.ssl_context = self.tls_setup.context()
        return self.ssl_context

    # --- starting TLS

    def handle(self) -> None:
        if self.implicit_tls:
            # Nothing may go out in clear on an implicit listener: hold the
            # output (the 220, or SessionHandler's 421 refusal) until the
            # handshake is done. A refused connection is then just closed.
            # Holding also keeps the socket off WRITE events during the
            # handshake (pyftpdlib would retry it on every writable event).
            self._held_output = []
        super().handle()  # bans and limits (SessionHandler), on_connect(), the 220

    def on_connect(self) -> None:
        super().on_connect()
        if self.implicit_tls and not self._closed:
            # Implicit FTPS: as if AUTH TLS, PBSZ 0 and PROT P had been sent.
            self._pbsz = self._prot = True
            self.secure_connection(self._session_context())

    def push(self, data: str) -> None:
        if self._held_output is not None:
            self._held_output.append(data)
        else:
            super().push(data)

    def ftp_AUTH(self, line: str) -> None:
        if not isinstance(self.socket, SSL.Connection):
            self._session_context()
        super().ftp_AUTH(line)

    def secure_connection(self, ssl_context: SSL.Context) -> None:
        super().secure_connection(ssl_context)
        if self._ssl_accepting:
            self._deadline = _HandshakeDeadline(self, self.tls_setup.handshake_timeout,
                                                self._handshake_expired)

    def _handshake_expired(self) -> None:
        self.tls_event("tls_timeout", f"TLS handshake not finished in "
                       f"{self.tls_setup.handshake_timeout} s; closing", logging.INFO)
        self.close()

    def handle_ssl_established(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        conn = self.socket
        self._tls_fields = {"tls_version": conn.get_protocol_version_name(),
                            "tls_cipher": conn.get_cipher_name() or ""}
        mode = "implicit" if self.implicit_tls else "explicit"
        self.tls_event("tls", f"TLS established ({mode})", logging.INFO, tls_mode=mode,
                       listener=self.listener or None, **self._tls_fields)
        held, self._held_output = self._held_output, None
        for data in held or ():
            self.push(data)

    def handle_failed_ssl_handshake(self) -> None:
        # No reply is possible: the client speaks TLS (or garbage) by now.
        self.tls_event("tls_failed", "TLS handshake failed; closing", logging.INFO,
                       reason=_ssl_reason())
        self.close()

    def flush_account(self) -> None:
        super().flush_account()
        if self.implicit_tls:  # REIN/USER must not drop the implicit PROT P
            self._pbsz = self._prot = True

    # --- policy: RFC 4217 refusals

    def required_level(self, username: str, fresh: bool = False) -> str:
        """'none', 'login' or 'all' for `username` (the server's default if unknown)."""
        if fresh:  # at login: see an override `ftpd passwd` or an admin just wrote
            self.authorizer.refresh()
        user = self.authorizer.user(username) if username else None
        override = user.tls_require if user is not None else None
        return override or self.tls_setup.require

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        if cmd in ("USER", "PASS") and not self._ssl_established:
            name = args[0] if cmd == "USER" else self.username
            if self.required_level(name, fresh=True) != "none":
                self.respond(REPLY_LOGIN_NEEDS_TLS)
                self.log_cmd(cmd, "", 530, REPLY_LOGIN_NEEDS_TLS[4:])
                self.tls_event("tls_required", "login without TLS refused", logging.INFO,
                               command=cmd)
                self.count("530_tls_required")
                return
        elif (cmd in _TRANSFER_COMMANDS and not self._prot
              and self.required_level(self.username) == "all"):
            self._shutdown_connecting_dtp()  # the PASV port is not needed any more
            self.respond(REPLY_DATA_NEEDS_PROT_P)
            self.log_cmd(cmd, args[0] if args else "", 521, REPLY_DATA_NEEDS_PROT_P[4:])
            self.count("521_prot_p_required")
            return
        super().process_command(cmd, *args, **kwargs)

    # --- data connections

    def on_data_tls(self, channel: TlsDataChannel) -> None:
        """The data handshake is done: check reuse before any data moves."""
        reused = tls_mod.session_reused(channel.socket)
        channel.tls_state = "reused" if reused else "new"
        self._data_tls[channel.tls_state] += 1
        policy = self.tls_setup.session_reuse
        if reused or policy == "off":
            channel.release()
            return
        if policy == "warn":
            if self._data_tls["new"] == 1:  # once per session, the summary counts the rest
                self.tls_event("tls_reuse_missing", "data connection did not resume the "
                               "control connection's TLS session; allowed (session_reuse = "
                               "warn)", logging.WARNING, action="allowed")
            channel.release()
            return
        self.tls_event("tls_reuse_missing", "data connection did not resume the control "
                       "connection's TLS session; refused with 522", logging.WARNING,
                       action="refused")
        self.count("522_reuse_required")
        channel.refuse(REPLY_REUSE_REQUIRED)

    # --- session life cycle

    def shut_down(self) -> None:
        if self._ssl_accepting:  # mid-handshake a 421 cannot be sent
            self.close()
        else:
            super().shut_down()

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().close()

    # --- logging

    def tls_event(self, name: str, message: str, level: int, **fields: Any) -> None:
        self._event(name, message, level, **fields)

    def summary_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = dict(self._tls_fields)
        if self.implicit_tls:
            fields["tls_mode"] = "implicit"
        if self._data_tls:
            fields["data_tls_reused"] = self._data_tls["reused"]
            fields["data_tls_new"] = self._data_tls["new"]
        return fields


def handler_for_listener(handler: type[SessionHandler],
                         setup: TlsSetup | None) -> Callable[[socket.socket], type[Any]]:
    """For one worker: a function giving the handler class for a listening socket.

    Without TLS every listener gets `handler` itself (plain FTP, no AUTH in
    FEAT). With TLS the classes are built once here, in the worker, after
    fork; with session_reuse = "off" they share one context per worker.
    """
    if setup is None:
        return lambda sock: handler
    shared = setup.context() if setup.session_reuse == "off" else None
    attrs = {"tls_setup": setup, "worker_context": shared, "ssl_context": shared}
    explicit = type("ExplicitTlsSessionHandler", (TlsSessionHandler, handler), dict(attrs))
    classes: dict[tuple[str, int], type[Any]] = {}

    def pick(sock: socket.socket) -> type[Any]:
        if not tls_mod.is_implicit(sock, setup.implicit):
            return explicit
        address = tls_mod.endpoint_of(sock)
        if address not in classes:
            host, port = address
            name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            classes[address] = type("ImplicitTlsSessionHandler", (TlsSessionHandler, handler),
                                    {**attrs, "implicit_tls": True, "listener": name})
        return classes[address]

    return pick
