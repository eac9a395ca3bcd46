"""Active mode (PORT/EPRT): strict parsing, bounce protection, source port L-1.

pyftpdlib answers every malformed PORT with the same "501 Invalid PORT
format.", compares addresses as strings (an EPRT with an upper-case or
expanded IPv6 address is "foreign"), replies 421 (which clients read as
"closing") when the client never accepts, and always connects from an
ephemeral port. Here every refusal says what was wrong and what to do, and
the data connection can come from the control port minus one (20 for 21),
which RFC 959 specifies and some client-side firewalls expect.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP
from pyftpdlib.ioloop import Connector

from .nat import IPAddress, client_address, unmapped

# RFC 2428: the delimiter is any printable ASCII character; a digit, '.' or
# ':' would be ambiguous inside the fields, so they are refused.
_BAD_DELIMITERS = set("0123456789.:")


class Refused(Exception):
    """A PORT/EPRT that is not acted on; `reply` is the full reply line."""

    def __init__(self, reply: str, reason: str) -> None:
        super().__init__(reply)
        self.reply = reply
        self.reason = reason  # the counter: malformed, foreign_address, privileged_port


@dataclass(frozen=True)
class DataTarget:
    """Where the client asked the data connection to go."""

    address: IPAddress
    port: int

    @property
    def ip(self) -> str:
        return str(self.address)


def _number(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise Refused(f"501 {what} {text!r} is not a number.", "malformed")
    return int(text)


def _port_number(port: int, command: str) -> int:
    if port == 0:
        raise Refused(f"501 {command} names port 0, which is not a valid data port.",
                      "malformed")
    if port > 65535:
        raise Refused(f"501 {command} port {port} is out of range (1-65535).", "malformed")
    return port


def parse_port(arg: str) -> DataTarget:
    """Parse `h1,h2,h3,h4,p1,p2` (RFC 959); raise Refused with a 501 saying why."""
    if ":" in arg:
        raise Refused("501 PORT carries only IPv4 addresses; for IPv6 use "
                      "EPRT |2|address|port|.", "malformed")
    fields = arg.split(",")
    if len(fields) != 6:
        raise Refused("501 PORT needs six comma-separated numbers h1,h2,h3,h4,p1,p2 "
                      f"(got {len(fields) if arg.strip() else 0}).", "malformed")
    numbers = [_number(field, "PORT field") for field in fields]
    for number in numbers:
        if number > 255:
            raise Refused(f"501 PORT field {number} is out of range: each of the six "
                          "numbers must be 0-255.", "malformed")
    port = _port_number(numbers[4] * 256 + numbers[5], "PORT")
    address = ipaddress.IPv4Address(".".join(map(str, numbers[:4])))
    return DataTarget(address, port)


def parse_eprt(arg: str) -> DataTarget:
    """Parse `<d>proto<d>address<d>port<d>` (RFC 2428); raise Refused saying why."""
    example = "EPRT |1|192.0.2.7|50000| or EPRT |2|2001:db8::7|50000|"
    if not arg:
        raise Refused(f"501 EPRT needs an argument, e.g. {example}.", "malformed")
    delimiter = arg[0]
    if not 33 <= ord(delimiter) <= 126 or delimiter in _BAD_DELIMITERS:
        raise Refused(f"501 EPRT delimiter {delimiter!r} is not allowed; use '|', e.g. "
                      f"{example}.", "malformed")
    parts = arg.split(delimiter)
    if len(parts) != 5 or parts[0] or parts[4]:
        raise Refused(f"501 EPRT needs three fields between delimiters, e.g. {example}.",
                      "malformed")
    protocol, text, port_text = parts[1:4]
    if protocol not in ("1", "2"):
        # RFC 2428's reply for an unknown network protocol, listing ours.
        raise Refused("522 Network protocol not supported, use (1,2)", "malformed")
    try:
        address: IPAddress = (ipaddress.IPv4Address(text) if protocol == "1"
                              else ipaddress.IPv6Address(text))
    except ValueError:
        family = "IPv4" if protocol == "1" else "IPv6"
        raise Refused(f"501 EPRT address {text!r} is not a valid {family} address "
                      f"(protocol {protocol} is {family}).", "malformed") from None
    port = _port_number(_number(port_text, "EPRT port"), "EPRT")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return DataTarget(address, port)


def check_target(command: str, target: DataTarget, client: str,
                 allow_foreign: bool) -> None:
    """Bounce protection (RFC 2577): only the client's own address, no port < 1024."""
    peer = client_address(client)
    if command == "PORT" and peer is not None and peer.version == 6:
        raise Refused("501 PORT is IPv4-only and this control connection is IPv6: "
                      "use EPRT or EPSV.", "malformed")
    if not allow_foreign and target.address != peer:
        raise Refused(
            f"501 Refused {command} to foreign address {target.ip}: data connections go "
            f"only to your own address ({peer}). Behind NAT, use passive mode (PASV/EPSV) "
            "or enable your router's FTP helper.", "foreign_address")
    if target.port < 1024:
        raise Refused(f"501 Refused {command} to privileged port {target.port}: data ports "
                      "below 1024 are not allowed (bounce protection).", "privileged_port")


def bind_source(family: int, host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) for an outgoing data connection.

    SO_REUSEADDR lets several data connections share the source port at once:
    each goes to a different client address or port, so each is its own
    4-tuple; bind() only conflicts with a socket *listening* on the port.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class SourcePortActiveDTP(ActiveDTP):
    """ActiveDTP that may connect from the control port minus one, and whose
    failures are 425 replies saying why (a subclass per configuration sets
    `timeout`)."""

    def __init__(self, ip: str, port: int, cmd_channel: Any) -> None:
        self._failure = ""  # why the connection failed, for the 425 reply
        self._counter = "425_connect_failed"
        if not cmd_channel.connect_from_port_20:
            super().__init__(ip, port, cmd_channel)
            return
        # ActiveDTP.__init__ with our own socket instead of an ephemeral one.
        Connector.__init__(self, ioloop=cmd_channel.ioloop)
        self.cmd_channel = cmd_channel
        self.log = cmd_channel.log
        self.log_exception = cmd_channel.log_exception
        self._idler = None
        if self.timeout:
            self._idler = self.ioloop.call_later(self.timeout, self.handle_timeout,
                                                 _errback=self.handle_error)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self._cmd = "EPRT" if family == socket.AF_INET6 else "PORT"
        self._normalized_addr = f"[{ip}]:{port}" if family == socket.AF_INET6 \
            else f"{ip}:{port}"
        local_ip, control_port = cmd_channel.socket.getsockname()[:2]
        source_port = max(control_port - 1, 0)  # control port 1 would mean port 0: any
        try:
            sock = cmd_channel.data_source_socket(family, unmapped(local_ip), source_port)
        except OSError as err:
            hint = ("; the server needs root or CAP_NET_BIND_SERVICE for it"
                    if err.errno in (errno.EACCES, errno.EPERM) else "")
            self._failure = f"cannot use source port {source_port} ({err.strerror or err}){hint}"
            self._counter = "425_source_port"
            self.handle_close()
            return
        sock.setblocking(False)
        self.set_socket(sock)
        try:
            self.connect((ip, port))
        except OSError as err:
            self._failure = err.strerror or str(err)
            self.handle_close()

    def handle_connect(self) -> None:
        super().handle_connect()
        self._forget()

    def _forget(self) -> None:
        # pyftpdlib keeps a finished connector referenced until the next
        # PORT/PASV, so the session would never look idle to a stop.
        if getattr(self.cmd_channel, "_dtp_connector", None) is self:
            self.cmd_channel._dtp_connector = None

    def handle_timeout(self) -> None:
        # pyftpdlib replies 421, which clients take for "closing the session".
        if self.cmd_channel.connected and not self._closed:
            self.cmd_channel.count("425_timeout")
            self.cmd_channel.respond(
                f"425 Data connection to {self._normalized_addr} timed out after "
                f"{self.timeout} s: a firewall or NAT on your side drops it; use passive "
                "mode (PASV/EPSV).")
        self.close()
        self._forget()

    def handle_error(self) -> None:
        # A refused connect surfaces here (asyncore raises the SO_ERROR it read,
        # which clears it): keep the reason for the reply.
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and not self._failure:
            self._failure = error.strerror or str(error)
        super().handle_error()

    def handle_close(self) -> None:
        if self._closed:
            return
        reason = self._failure
        if not reason and self.socket is not None:
            try:
                code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                code = 0
            reason = os.strerror(code) if code else "the connection failed"
        self.close()
        self._forget()
        if self.cmd_channel.connected:
            self.cmd_channel.count(self._counter)
            self.cmd_channel.respond(
                f"425 Can't open data connection to {self._normalized_addr}: {reason}. "
                "A firewall on your side may block it; try passive mode (PASV/EPSV).")

