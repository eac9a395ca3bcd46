"""The FTP daemon as the supervisor sees it: loading a plan, binding, workers.

This is the glue between the FTP-agnostic supervisor and the FTP parts
(configuration, users, passive ports, the pyftpdlib worker).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from . import config as config_mod
from . import datachannel, isolation, nat
from . import logging as ftpd_logging
from . import users as users_mod
from . import worker as worker_mod
from .activation import adopt_listen_fds
from .bans import BanPolicy, BanTable, FailureTracker
from .limits import SessionTable
from .passive import worker_slice
from .privileges import Account, StartupError, bind_all, dropper, worker_account
from .settings import Endpoint
from .supervisor import MAX_SLOTS, Plan
from .users import User

log = logging.getLogger("ftpd.app")


@dataclass(frozen=True)
class Payload:
    config: config_mod.Config
    users: dict[str, User]
    masquerade_ip: str | None
    account: Account | None
    tls: Any = None  # tls.TlsSetup, parsed as root; workers build contexts from it
    resolved: dict[str, str] = field(default_factory=dict)  # [passive] DNS names -> IPv4


def load_tls(config: config_mod.Config) -> tuple[Any, list[str]]:
    """The TLS set-up (None without a certificate), importing OpenSSL only then."""
    if not config.tls.certificate:
        return None, []
    if sys.modules.get("OpenSSL", ...) is None:
        raise StartupError(f"{config.origin('tls.certificate')}: tls.certificate: this daemon "
                           "started without TLS; enabling it needs a restart "
                           "(systemctl restart ftpd)")
    from . import tls as tls_mod

    return tls_mod.load(config)


class FtpApp:
    """Implements supervisor.App for ftpd."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        # Sockets from systemd socket activation replace [server] listen.
        self.activated = adopt_listen_fds()
        # Daemon-wide session counts and bans, shared with every worker of every
        # generation; created before any fork and kept across reloads.
        self.sessions = SessionTable(MAX_SLOTS)
        self.failures = FailureTracker(BanTable())
        # Passive ports are probed at start only: later our own sessions hold some.
        self.loaded_once = False

    def load(self) -> Plan:
        config = config_mod.load(self.config_path)
        try:
            users = users_mod.load(config.users.file)
        except users_mod.UsersError as err:
            raise StartupError(
                f"{config.origin('users.file')}: users.file: the users file has problems:\n"
                + str(err)) from None
        # A certificate that cannot be used fails the load: a reload keeps the old one.
        tls_setup, tls_warnings = load_tls(config)
        self._setup_logging(config)
        # Masquerade names are resolved here once (never fatal: workers retry).
        resolved = nat.resolve_at_start(config)
        payload = Payload(config, users, nat.static_address(config, resolved),
                          worker_account(config.server.user, config.server.group,
                                         config.origin("server.user")), tls_setup, resolved)
        probe, self.loaded_once = not self.loaded_once, True
        isolation_warnings = isolation.startup_warnings(config)  # raises if unusable
        for warning in [*config_mod.warnings(config, probe_ports=probe), *tls_warnings,
                        *isolation_warnings]:
            log.warning("%s", warning)
        endpoints = tuple(self.activated) or config.server.listen
        endpoints += tuple(e for e in config.tls.implicit_listen if e not in endpoints)
        return Plan(workers=config.server.workers, endpoints=endpoints,
                    shutdown_timeout=config.server.shutdown_timeout,
                    worker_timeout=config.server.worker_timeout, payload=payload)

    def bind(self, plan: Plan, endpoints: list[Endpoint]) -> dict[Endpoint, socket.socket]:
        adopted = {e: self.activated[e] for e in endpoints if e in self.activated}
        if adopted:
            log.info("using %d socket(s) from systemd socket activation: %s", len(adopted),
                     ", ".join(str(e) for e in adopted))
        rest = [e for e in endpoints if e not in adopted]
        config = plan.payload.config
        implicit = {e: (config.origin("tls.implicit_listen"), "tls.implicit_listen")
                    for e in config.tls.implicit_listen}
        return adopted | bind_all(rest, config.origin("server.listen"), implicit)

    def run_worker(self, plan: Plan, index: int, generation: int,
                   listeners: list[socket.socket], report: socket.socket, slot: int) -> int:
        payload: Payload = plan.payload
        self.sessions.slot = slot
        spec = worker_mod.WorkerSpec(
            index=index, generation=generation, config=payload.config, listeners=listeners,
            users=payload.users,
            passive_ports=worker_slice(payload.config.passive.ports, plan.workers, index),
            masquerade_ip=payload.masquerade_ip, report=report, master_pid=os.getppid(),
            tls=payload.tls, sessions=self.sessions, bans=self.failures.table,
            session_account=payload.account)
        # In process isolation workers keep root (they chroot and setuid
        # every session): no drop, and no port-20 helper.
        account = isolation.worker_account(payload.config, payload.account)
        # Forked here, still privileged, when workers need port 20 after their drop.
        binder = datachannel.start_binder(payload.config, (e.port for e in plan.endpoints),
                                          dropping=account is not None)
        spec.data = datachannel.DataStart(payload.resolved, binder)
        try:
            return worker_mod.run(spec, dropper(account))
        finally:
            if binder is not None:
                binder.close()  # no helper outlives its worker

    def worker_exited(self, slot: int) -> None:
        self.sessions.clear_slot(slot)

    def on_message(self, plan: Plan, message: str) -> None:
        kind, _, ip = message.partition(" ")
        if kind != "fail" or not ip:
            return
        security = plan.payload.config.security
        policy = BanPolicy(security.max_login_failures, security.failure_window,
                           security.ban_time)
        if self.failures.failed(ip, policy):
            ftpd_logging.event(
                "ban", f"{ip} banned for {policy.ban_time} s after {policy.max_failures} failed "
                f"logins in {policy.window} s", logging.WARNING, remote_addr=ip,
                ban_seconds=policy.ban_time)

    def _setup_logging(self, config: config_mod.Config) -> None:
        for key in ("xferlog", "json"):
            path = getattr(config.log, key)
            if path:
                try:
                    open(path, "a").close()
                except OSError as err:
                    raise StartupError(f"{config.origin('log.' + key)}: log.{key}: cannot "
                                       f"write {path}: {err.strerror}") from None
        ftpd_logging.setup(config.log.level, config.log.xferlog, config.log.json)

    def reopen_logs(self) -> None:
        ftpd_logging.reopen()
