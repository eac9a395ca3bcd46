"""How sessions set up data connections: the [passive] and [active] policies.

`DataChannelPolicy` is a mixin of SessionHandler holding the PASV/EPSV/PORT/
EPRT commands; the protocol machinery (queues, DTP handlers) stays
pyftpdlib's. The rest of the module wires a worker up: the per-client 227
address table and its refresher (nat.py), the helper that binds port 20
(privileges.py), and the periodic `data_channel_stats` event, which is what an
admin reads to see whether clients use PASV or EPSV and why 425s happen.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .active import (
    Refused,
    SourcePortActiveDTP,
    bind_source,
    check_target,
    parse_eprt,
    parse_port,
)
from .logging import event
from .nat import PassiveAddresses, Refresher
from .passive import RangePassiveDTP
from .privileges import PortBinder, start_port_binder

if TYPE_CHECKING:
    from pyftpdlib.handlers import FTPHandler as _Base
else:
    _Base = object

# Counters (WorkerRuntime.counters) reported by the data_channel_stats event.
DATA_COUNTERS = (
    "pasv", "epsv", "port", "eprt",
    "425_timeout", "425_foreign_address", "425_range_exhausted", "425_connect_failed",
    "425_source_port", "pasv_refused_ipv6", "passive_expired", "foreign_data_rejected",
    "refused_malformed", "refused_foreign_address", "refused_privileged_port",
    "refused_active_disabled", "refused_after_epsv_all",
)


@dataclass(frozen=True)
class DataStart:
    """What the supervisor hands a worker for its data connections."""

    resolved: dict[str, str] = field(default_factory=dict)  # masquerade name -> IPv4
    binder: PortBinder | None = None


class DataChannelPolicy(_Base):
    """PASV/EPSV/PORT/EPRT with ftpd's policies; attributes set by handler_attributes()."""

    active_enabled = True
    connect_from_port_20 = False
    passive_addresses: PassiveAddresses | None = None
    port_binder: PortBinder | None = None
    # pyftpdlib's (untyped) instance state this mixin touches; annotations only.
    _dtp_acceptor: Any
    _dtp_connector: Any
    data_channel: Any
    _epsvall: bool

    # --- passive

    def ftp_PASV(self, line: str) -> None:
        if self._epsvall:
            self._refuse("PASV", Refused("501 PASV is not allowed after EPSV ALL; use EPSV.",
                                         "after_epsv_all"))
            return
        super().ftp_PASV(line)
        self._forget_closed_acceptor()

    def _forget_closed_acceptor(self) -> None:
        # A listener that answered 425 at once is closed but still referenced
        # (pyftpdlib), which would make the session look busy to a stop.
        if self._dtp_acceptor is not None and self._dtp_acceptor._closed:
            self._dtp_acceptor = None

    def ftp_EPSV(self, line: str) -> None:
        if line.strip().upper() == "ALL":
            # RFC 2428: the client promises to use only EPSV from now on (so a
            # NAT in between need not parse the session); pyftpdlib answers
            # with a 220, which is a greeting code.
            self._epsvall = True
            self.respond("200 EPSV ALL accepted: only EPSV may set up data connections "
                         "in this session now.")
            return
        super().ftp_EPSV(line)
        self._forget_closed_acceptor()

    # --- active

    def ftp_PORT(self, line: str) -> None:
        self._active("PORT", line)

    def ftp_EPRT(self, line: str) -> None:
        self._active("EPRT", line)

    def _active(self, command: str, line: str) -> None:
        try:
            if not self.active_enabled:
                raise Refused(f"502 Active mode ({command}) is disabled on this server; use "
                              "passive mode (PASV or EPSV).", "active_disabled")
            if self._epsvall:
                raise Refused(f"501 {command} is not allowed after EPSV ALL; use EPSV.",
                              "after_epsv_all")
            target = parse_port(line) if command == "PORT" else parse_eprt(line)
            check_target(command, target, self.remote_ip, self.permit_foreign_addresses)
        except Refused as refusal:
            self._refuse(command, refusal, line)
            return
        self.count(command.lower())  # like pasv/epsv: accepted ones; refusals count apart
        # What pyftpdlib's _make_eport does once its own checks pass.
        self._shutdown_connecting_dtp()
        if self.data_channel is not None:
            self.data_channel.close()
            self.data_channel = None
        if not self.server._accept_new_cons():
            self.respond("425 Too many connections; can't open a data connection now.")
            return
        connector = self.active_dtp(target.ip, target.port, self)
        # Keep it only while it is still connecting (it may fail or, rarely,
        # connect within its constructor).
        if not connector._closed and not connector.connected:
            self._dtp_connector = connector

    def _refuse(self, command: str, refusal: Refused, argument: str = "") -> None:
        self.count("refused_" + refusal.reason)
        self._event("data_refused", f"{command} refused ({refusal.reason})",
                    command=command, argument=argument[:100] or None, reason=refusal.reason)
        self.respond(refusal.reply)

    def data_source_socket(self, family: int, host: str, port: int) -> socket.socket:
        """A socket bound to the source port of an active data connection."""
        if self.port_binder is not None and port in self.port_binder.ports:
            return self.port_binder.bind(family, host, port)
        return bind_source(family, host, port)


def handler_attributes(config: Any) -> dict[str, Any]:
    """Class attributes of the per-configuration SessionHandler subclass."""
    return {
        "active_enabled": config.active.enabled,
        "connect_from_port_20": config.active.connect_from_port_20,
        # pyftpdlib's name covers both directions: PORT/EPRT to, and passive
        # data connections from, another address (FXP).
        "permit_foreign_addresses": config.active.allow_foreign_addresses,
        "permit_privileged_ports": False,
        "passive_dtp": type("ConfiguredPassiveDTP", (RangePassiveDTP,),
                            {"timeout": config.passive.connect_timeout}),
        "active_dtp": type("ConfiguredActiveDTP", (SourcePortActiveDTP,),
                           {"timeout": config.active.connect_timeout}),
    }


def binder_ports(config: Any, control_ports: Iterable[int]) -> frozenset[int]:
    """Privileged source ports active data connections will come from."""
    if not (config.active.enabled and config.active.connect_from_port_20):
        return frozenset()
    return frozenset(port - 1 for port in control_ports if 0 < port - 1 < 1024)


def start_binder(config: Any, control_ports: Iterable[int], dropping: bool) -> PortBinder | None:
    """Fork the port-20 helper when workers will drop privileges and need it.

    Without a drop the worker binds itself: as root, or with an ambient
    CAP_NET_BIND_SERVICE given by systemd.
    """
    ports = binder_ports(config, control_ports)
    return start_port_binder(ports) if ports and dropping else None


class StatsReporter:
    """Logs the data-connection counters of one worker every `interval` seconds,
    only when something happened since the last report."""

    def __init__(self, counters: Any, ioloop: Any, interval: float, worker: int) -> None:
        self.counters = counters
        self.ioloop = ioloop
        self.interval = interval
        self.worker = worker
        self._last = {name: 0 for name in DATA_COUNTERS}

    def start(self) -> None:
        if self.interval:
            self.ioloop.call_every(self.interval, self.report)

    def report(self) -> None:
        now = {name: self.counters[name] for name in DATA_COUNTERS}
        delta = {name: now[name] - self._last[name] for name in DATA_COUNTERS}
        self._last = now
        if not any(delta.values()):
            return
        failures = ", ".join(f"{delta[name]} {name[4:].replace('_', ' ')}"
                             for name in DATA_COUNTERS if name.startswith("425_") and delta[name])
        message = (f"data connections in the last {self.interval:g} s: {delta['pasv']} PASV, "
                   f"{delta['epsv']} EPSV, {delta['port']} PORT, {delta['eprt']} EPRT; "
                   f"425: {failures or 'none'}")
        event("data_channel_stats", message, logging.INFO, worker=self.worker,
              interval=self.interval, **delta)


def start_worker(handler: type, config: Any, start: DataStart | None, ioloop: Any,
                 offloader: Any, runtime: Any) -> Refresher:
    """Wire a worker's handler class up; runs in the worker before it serves."""
    start = start or DataStart()
    addresses = PassiveAddresses.from_config(config, start.resolved)
    handler.passive_addresses = addresses  # type: ignore[attr-defined]
    handler.port_binder = start.binder  # type: ignore[attr-defined]
    refresher = Refresher(addresses, offloader, ioloop, config.passive.resolve_interval,
                          runtime.worker)
    refresher.start()
    StatsReporter(runtime.counters, ioloop, config.log.stats_interval, runtime.worker).start()
    return refresher
