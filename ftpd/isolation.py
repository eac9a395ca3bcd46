"""Kernel isolation of logged-in sessions (`[users] isolation = "process"`).

After a successful login the worker forks; the child takes the session over
and the worker forgets it:

* The child inherits the control socket and, being a copy of the worker's
  memory, the handler object with its pyOpenSSL connection (TLS state cannot
  be handed to another process any other way). It releases every other
  descriptor of the worker (listeners, other sessions, the worker's epoll
  set), opens what it needs from the host (name-service modules are loaded
  in the worker beforehand, the journal socket is connected, log files stay
  open), then chroot(2)s into the user's root and becomes the user for good
  (`privileges.enter_jail`). It runs the session on a fresh IOLoop until the
  client quits and exits with os._exit().
* The worker closes its descriptor of the socket without sending anything
  (no FIN, no TLS alert: the child holds the connection) and drops the
  session from its loop.

Counting. The session keeps its claims in the daemon-wide limits table
(limits.py): the child gets no slot of its own and never touches the table;
the worker keeps counting the session (its connection and its user) until it
reaps the child (SIGCHLD, and every heartbeat as a fallback) and releases the
claims then, exactly as a close would. If the worker dies, the supervisor
zeroes the worker's column, which is right because its session children die
with it (below).

Life cycle. A stopping worker (SIGTERM) sends SIGTERM to its session
children, a retiring one (SIGUSR2, reload) sends SIGUSR2, and a child forked
after that starts in the same mode; a child does what the worker does for
one session (stop: close when idle, after the running transfer; retire: go on
until the client quits; both within shutdown_timeout). The worker exits only
when its children are gone, killing stragglers shortly after its deadline.
A child whose worker is gone (the worker holds one end of a socket pair, the
"lifeline") closes its session with 421 at once: an isolated session lives
and dies with its worker like an in-process one, so nothing outlives
`ftpd serve` and the counts stay right.

Inside the jail nothing is trusted and a writable root is fine: the process
never looks up names there (LIST shows the names gathered before the
chroot), imports no module (sys.path is emptied) and has no way back to root.

Privileges. Workers in this mode keep root: they fork and jail every session
and PAM reads /etc/shadow. What runs as root is the part before login (the
greeting, USER/PASS, AUTH TLS and its handshake); no file of any user is
touched there, since every logged-in session leaves at once. Moving the
pre-login part into an unprivileged process, as vsftpd does, would need the
TLS state to cross processes, which pyOpenSSL cannot do.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyftpdlib.ioloop import IOLoop

from .offload import SocketReader
from .privileges import Account, StartupError, enter_jail, start_port_binder

if TYPE_CHECKING:
    from pyftpdlib.handlers import FTPHandler as _Handler
else:
    _Handler = object

log = logging.getLogger("ftpd.isolation")

CHILD_GRACE = 2.0  # seconds a worker waits past its deadline before SIGKILLing children
_DRAIN_SIGNALS = {signal.SIGTERM, signal.SIGUSR2}
# Held around the fork: until the child has its own signal set-up, a signal
# must neither kill it nor reach the worker's wake-up socket.
_HELD_SIGNALS = {*_DRAIN_SIGNALS, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD}


# --- configuration checks

def config_problems(config: Any) -> list[Any]:
    """Static rules for `ftpd check` and every load (config._cross_check)."""
    from .config import Problem  # config imports this module lazily

    users, problems = config.users, []
    if users.system and users.isolation != "process":
        problems.append(Problem(
            config.origin("users.isolation"), "users.isolation",
            'users.system = true needs isolation = "process": system accounts are served '
            "only in a process of their own, chrooted and running as the account"))
    if users.isolation == "process" and config.server.user == "root":
        problems.append(Problem(
            config.origin("server.user"), "server.user",
            'with users.isolation = "process" the sessions of virtual users run as '
            "server.user, and root can leave a chroot: set an unprivileged account "
            '(e.g. "ftpd")'))
    return problems


def startup_warnings(config: Any) -> list[str]:
    """Checks of this host at start and reload; raises StartupError when unusable."""
    users = config.users
    if users.isolation != "process":
        return []
    if os.geteuid() != 0:
        raise StartupError(f'{config.origin("users.isolation")}: users.isolation: "process" '
                           "needs ftpd to be started as root (it chroots and changes user "
                           'for every session); use "shared" or start it as root')
    if not users.system:
        return []
    from .pam import Pam, PamUnavailable

    try:
        Pam(users.pam_service)
    except PamUnavailable as err:
        raise StartupError(f"{config.origin('users.system')}: users.system: {err}") from None
    if not os.path.exists(os.path.join("/etc/pam.d", users.pam_service)):
        return [f"{config.origin('users.pam_service')}: users.pam_service: "
                f"/etc/pam.d/{users.pam_service} does not exist, so PAM uses the 'other' "
                "service; install etc/pam.d/ftpd there"]
    return []


def worker_account(config: Any, account: Account | None) -> Account | None:
    """The account a worker drops to: none in process mode, whose workers fork jails."""
    return None if config.users.isolation == "process" else account


# --- what a session process becomes

@dataclass(frozen=True)
class Jail:
    user: str  # the login name
    root: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    user_names: dict[int, str]  # for LIST inside the jail, where no lookup is made
    group_names: dict[int, str]


def _names(uid: int, gid: int) -> tuple[dict[int, str], dict[int, str]]:
    """{uid: user name}, {gid: group name} (empty where the name service has none)."""
    users, groups = {}, {}
    try:
        users[uid] = pwd.getpwuid(uid).pw_name
    except KeyError:
        pass
    try:
        groups[gid] = grp.getgrgid(gid).gr_name
    except KeyError:
        pass
    return users, groups


@dataclass
class IsolatedChild:
    pid: int
    session: Any  # the worker's copy of the handler: its claims are released at reap
    user: str


class IsolatedSessions:
    """The worker's side: hands sessions over to jailed processes and reaps them."""

    def __init__(self, config: Any, account: Account | None) -> None:
        self.shutdown_timeout = float(config.server.shutdown_timeout)
        self.account = account  # virtual users' sessions run as [server] user
        self.children: dict[int, IsolatedChild] = {}
        self.draining: str | None = None  # "stop" or "retire"; later children inherit it
        # The worker keeps one end; children watch the other for EOF.
        self._lifeline, self.lifeline_child = socket.socketpair()
        # Looked up once here: virtual users' sessions all run as this account.
        self._virtual_names = _names(account.uid, account.gid) if account else ({}, {})
        _prime_name_service()

    def count(self) -> int:
        return len(self.children)

    def jail_for(self, session: Any, username: str) -> Jail:
        """Where and as whom `username`'s session runs; raises LookupError if nowhere."""
        system = getattr(session.authorizer, "system_account", None)
        account = system(username) if system is not None else None
        if account is not None:  # names looked up with the account, in a thread
            return Jail(username, account.home, account.uid, account.gid, account.groups,
                        {account.uid: account.name}, account.group_names)
        if self.account is None:
            raise LookupError("no unprivileged account for virtual users (server.user)")
        root = session.authorizer.get_home_dir(username)
        return Jail(username, root, self.account.uid, self.account.gid, (self.account.gid,),
                    *self._virtual_names)

    def hand_over(self, session: Any, username: str) -> None:
        """Move a session that just logged in into a jailed process of its own."""
        try:
            jail = self.jail_for(session, username)
        except (LookupError, OSError) as err:
            self._refuse(session, username, str(err))
            return
        session.del_channel()  # before the fork: the child never sees it in our epoll set
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: see below
                pid = os.fork()
        except OSError as err:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            session.add_channel()
            self._refuse(session, username, f"fork failed: {err.strerror}")
            return
        if pid == 0:
            # The offload threads do not exist here; nothing below takes a lock
            # they could have held (logging re-creates its locks at fork).
            status = 1
            try:
                status = SessionProcess(self, session, jail, old_mask).run()
            except BaseException:
                log.exception("isolated session of %r failed", username)
            finally:
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self._forget(session)
        # A drain that began before the fork is in the child's copy of
        # self.draining; one that begins later reaches it through drain().
        self.children[pid] = IsolatedChild(pid, session, username)

    def _refuse(self, session: Any, username: str, why: str) -> None:
        log.error("cannot isolate the session of %r: %s", username, why)
        session.respond("421 Cannot start your session on this server now; try again later.")
        session.close_when_done()

    @staticmethod
    def _forget(session: Any) -> None:
        """Drop the worker's copy of a session the child now owns, sending nothing."""
        if session._idler is not None and not session._idler.cancelled:
            session._idler.cancel()
        for task in session._tasks:
            task.cancel()
        session._tasks = []
        session.runtime.sessions.discard(session)
        if session.remote_ip in session.server.ip_map:  # pyftpdlib's per-process count
            session.server.ip_map.remove(session.remote_ip)
        # The plain socket's close() (an SSL.Connection delegates it): our
        # descriptor goes, the connection stays the child's. Marked closed so
        # nothing here ever calls the handler's close() (TLS shutdown, release).
        session.socket.close()
        session._closed = True
        session.connected = False

    # --- reaping and draining

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._ended(pid, status)

    def _ended(self, pid: int, status: int) -> None:
        child = self.children.pop(pid)
        child.session._release()  # the worker's claims: connection and user
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.warning("isolated session of %r (pid %d) ended with status %d", child.user,
                        pid, code)

    def drain(self, stopping: bool) -> None:
        """Forward a stop (SIGTERM) or retire (SIGUSR2) to every session child."""
        self.draining = "stop" if stopping or self.draining == "stop" else "retire"
        for pid in self.children:
            _kill(pid, signal.SIGTERM if stopping else signal.SIGUSR2)

    def stop_all(self, grace: float = CHILD_GRACE) -> None:
        """At the worker's deadline: wait `grace` seconds, then kill what is left."""
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.children):
            log.warning("isolated session of %r (pid %d) still running; killing it",
                        self.children[pid].user, pid)
            _kill(pid, signal.SIGKILL)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            self._ended(pid, status)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # exited; reaped on the next pass


def _prime_name_service() -> None:
    """Load the NSS modules of passwd, group and hosts while / is the host's.

    After a chroot glibc keeps its nsswitch configuration and the modules it
    has loaded; a module loaded for the first time in the jail would come
    from the user's files.
    """
    for lookup in (lambda: pwd.getpwuid(0), lambda: grp.getgrgid(0),
                   lambda: socket.getaddrinfo("localhost", None)):
        try:
            lookup()
        except (KeyError, OSError):
            pass


# --- the session process

class JailedSession(_Handler):
    """Mixin put in front of the session's class in its process: one user for good."""

    def ftp_USER(self, line: str) -> None:
        self.respond("530 This session stays logged in as the same user; reconnect to log "
                     "in as another.")

    def ftp_REIN(self, line: str) -> None:
        self.respond("502 REIN is not available here; reconnect to log in again.")


class JailedFS:
    """Mixin put in front of the session's filesystem class inside the jail."""

    jail_users: dict[int, str] = {}
    jail_groups: dict[int, str] = {}

    def get_user_by_uid(self, uid: int) -> str | int:
        # No passwd lookup in the jail: its /etc is the user's.
        return self.jail_users.get(uid, uid)

    def get_group_by_gid(self, gid: int) -> str | int:
        return self.jail_groups.get(gid, gid)

    def _open_dir(self, directory: str) -> int:
        # The kernel confines now; the user-space check of ConfinedFS reads
        # /proc, which does not exist in the jail.
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class SessionProcess:
    """The child's side: leaves the worker behind, enters the jail, serves one session."""

    def __init__(self, owner: IsolatedSessions, session: Any, jail: Jail,
                 old_mask: set[int | signal.Signals]) -> None:
        # Drain signals stay blocked (pending) until our loop can take them.
        self.owner, self.session, self.jail, self.old_mask = owner, session, jail, old_mask
        self.old_loop = session.ioloop
        self.loop: Any = None
        self.binder: Any = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._deadline: Any = None

    def run(self) -> int:
        session, jail = self.session, self.jail
        signal.set_wakeup_fd(-1)  # the worker's wake-up socket must not hear our signals
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)  # the supervisor decides; logs cannot reopen
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._leave_worker()
        self._pin_logs()
        self._close_inherited()
        self.binder = self._port_binder()
        try:
            enter_jail(jail.root, jail.uid, jail.gid, jail.groups)
        except (OSError, RuntimeError) as err:
            log.error("cannot jail the session of %r in %s: %s", jail.user, jail.root, err)
            session.socket.setblocking(True)
            try:
                session.push("421 Cannot enter your home directory; closing.\r\n")
                session.initiate_send()
            except OSError:
                pass
            return 1
        sys.path[:] = []  # nothing is imported from the user's files
        try:
            self._serve()
        finally:
            # Leaving: a late stop signal needs no wake-up any more.
            signal.set_wakeup_fd(-1)
            for signum in _DRAIN_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            if self.binder is not None:
                self.binder.close()
        return 0

    def _leave_worker(self) -> None:
        """Become a session of our own: fresh runtime, no table, no worker loop."""
        session = self.session
        session._counted_ip = session._counted_user = None  # the worker releases them
        for shared in (session.runtime.table, session.runtime.bans):
            if shared is not None:
                shared.unmap()  # the daemon-wide counts and bans stay out of the jail
        runtime = dataclasses.replace(
            session.runtime, table=None, limits=None, bans=None, report=None,
            sessions={session}, stopping=False, isolation=None)
        session.runtime = runtime
        if getattr(session, "port_binder", None) is not None:
            session.port_binder = None  # the worker's helper stays the worker's
        anonymous = getattr(session.authorizer, "anonymous", None)
        if anonymous is not None and session.authorizer.is_anonymous(session.username):
            # Paths inside the jail are relative to its root.
            session.authorizer.anonymous = dataclasses.replace(
                anonymous, root="/", upload_dir=_rebase(anonymous.upload_dir, self.jail.root))

    def _pin_logs(self) -> None:
        for handler in logging.getLogger().handlers:
            pin = getattr(handler, "pin", None)
            if pin is not None:
                try:
                    pin()  # connect the journal socket while its path resolves
                except OSError as err:
                    log.warning("cannot connect the log socket before the chroot: %s", err)

    def _kept_fds(self) -> set[int]:
        keep = {0, 1, 2, self.session.socket.fileno(), self.owner.lifeline_child.fileno()}
        for handler in logging.getLogger().handlers:
            for name in ("stream", "file", "sock"):
                try:
                    keep.add(getattr(handler, name).fileno())
                except (AttributeError, OSError, ValueError):
                    pass
        return keep

    def _close_inherited(self) -> None:
        """Release every descriptor of the worker but ours, sending nothing.

        Slots are overwritten with /dev/null rather than closed: Python
        objects of the worker still hold those numbers, and one collected
        later would close whatever reused the number. Then the objects we
        know (the worker's loop and what is registered in it) are closed,
        which frees most slots for good.
        """
        keep = self._kept_fds()
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep and fd != null:
                try:
                    os.dup2(null, fd, inheritable=False)
                except OSError:
                    pass  # listdir's own descriptor, gone already
        os.close(null)
        for dispatcher in list(self.old_loop.socket_map.values()):
            sock = getattr(dispatcher, "socket", None)
            if dispatcher is not self.session and sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        poller = getattr(self.old_loop, "_poller", None)
        if poller is not None:
            poller.close()
        self.owner._lifeline.close()

    def _port_binder(self) -> Any:
        """Our own port-20 helper, forked while still root (see privileges.PortBinder)."""
        if not getattr(self.session, "connect_from_port_20", False):
            return None
        port = self.session.socket.getsockname()[1] - 1
        if not 0 < port < 1024:
            return None
        binder = start_port_binder([port])
        self.session.port_binder = binder
        return binder

    def _serve(self) -> None:
        session, jail = self.session, self.jail
        loop = self.loop = IOLoop()
        session.ioloop = loop
        session._tasks = []
        reader, writer = self._wakeup = socket.socketpair()  # kept open while we live
        reader.setblocking(False)
        writer.setblocking(False)
        SocketReader(reader, loop, self._on_signals)
        SocketReader(self.owner.lifeline_child, loop, lambda _data: None, self._worker_gone)
        for signum in _DRAIN_SIGNALS:
            signal.signal(signum, _noop)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        session.add_channel()
        if session.timeout:
            session._idler = loop.call_later(session.timeout, session.handle_timeout,
                                             _errback=session.handle_error)
        cls = type(session)
        session.__class__ = type(f"Jailed{cls.__name__}", (JailedSession, cls), {})
        signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)
        session.complete_login(jail.user, "/", isolation="process", jail=jail.root)
        if session.fs is not None:
            fs_cls = type(session.fs)
            session.fs.__class__ = type(f"Jailed{fs_cls.__name__}", (JailedFS, fs_cls), {
                "jail_users": jail.user_names, "jail_groups": jail.group_names})
        if self.owner.draining:
            self._drain(self.owner.draining == "stop")
        timeout = None
        while not session._closed:
            loop.poll(timeout)
            timeout = loop.sched.poll()
        loop.sched.poll()  # what the close scheduled (pyftpdlib's on_disconnect)

    # --- stop, retire, worker gone

    def _on_signals(self, data: bytes) -> None:
        for signum in data:
            if signum == signal.SIGTERM:
                self._drain(stopping=True)
            elif signum == signal.SIGUSR2:
                self._drain(stopping=False)

    def _drain(self, stopping: bool) -> None:
        session = self.session
        if stopping and not session.runtime.stopping:
            session.runtime.stopping = True  # the handler closes after a running transfer
            if session.idle():
                session.shut_down()
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.owner.shutdown_timeout,
                                                  self._force_close)

    def _force_close(self) -> None:
        if not self.session._closed:
            self.session.respond("421 Server shutting down.")
            self.session.close()
        self.loop.call_later(CHILD_GRACE / 2, os._exit, 0)  # a TLS shutdown nobody answers

    def _worker_gone(self) -> None:
        if not self.session._closed:
            log.warning("worker gone; closing the isolated session of %r", self.jail.user)
            self._force_close()


def _noop(signum: int, frame: Any) -> None:
    """Installed so the signal is delivered (and written to the wake-up fd)."""


def _rebase(path: str, root: str) -> str:
    """`path` (under `root`) as seen from inside a chroot to `root`."""
    if not path:
        return path
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    return "/" if rel == "." else "/" + rel
