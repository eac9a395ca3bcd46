"""The prefork supervisor (master): signals, spawning, reaping, heartbeats,
reload and shutdown — and nothing about FTP.

Modelled on gunicorn's arbiter. Signal handlers do nothing; the wake-up fd
carries each signal number into the single-threaded main loop, which
dispatches it. Each worker reports over its own datagram socket ("ready",
then a heartbeat every second with its session and transfer counts); a
worker silent for `worker_timeout` seconds is killed and replaced.

Reload starts a new generation of workers with the new plan; once all of
them are ready, the old generation is told to retire (SIGUSR2): it stops
accepting and serves its sessions until their clients quit or
`shutdown_timeout` passes. The listening sockets are shared by all
generations, so no connection is refused during the switch.

All OS calls go through `ProcessOps`, which unit tests replace with a fake.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .notify import Notifier
from .settings import Endpoint

log = logging.getLogger("ftpd.supervisor")

EXIT_BOOT_FAILED = 3
MAX_SLOTS = 512  # two full generations of the most workers a plan may ask for (256)
KILL_GRACE = 5.0  # seconds past shutdown_timeout before a draining worker is killed
QUICK_DEATH = 5.0  # a worker dying this soon after start counts towards a crash loop
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW = 30.0


@dataclass(frozen=True)
class Plan:
    """What one configuration asks of the supervisor (built by the app)."""

    workers: int
    endpoints: tuple[Endpoint, ...]
    shutdown_timeout: float
    worker_timeout: float
    payload: Any = None  # app data handed to run_worker


class App(Protocol):
    def load(self) -> Plan:
        """Read the configuration; raise an exception whose str() lists every problem."""
        ...

    def bind(self, plan: Plan, endpoints: list[Endpoint]) -> dict[Endpoint, socket.socket]:
        """Bind new listeners (privileged); raise on failure, binding none."""
        ...

    def run_worker(self, plan: Plan, index: int, generation: int,
                   listeners: list[socket.socket], report: socket.socket, slot: int) -> int:
        """Body of a worker process; returns its exit status.

        `slot` is unique among live workers (of every generation) and below MAX_SLOTS.
        """
        ...

    def worker_exited(self, slot: int) -> None:
        """A worker is gone (reaped): release what it held in shared state."""
        ...

    def on_message(self, plan: Plan, message: str) -> None:
        """A worker's report that is not a heartbeat (the app's own protocol)."""
        ...

    def reopen_logs(self) -> None: ...


class ProcessOps:
    """The OS calls the supervisor makes."""

    def fork(self) -> int:
        return os.fork()

    def kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def reap(self) -> list[tuple[int, int]]:
        """(pid, exit status) of every exited child; a signal n gives -n."""
        exited = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exited.append((pid, os.waitstatus_to_exitcode(status)))
        return exited

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, sockets: list[socket.socket], timeout: float) -> list[socket.socket]:
        poller = select.poll()  # not select(): no limit on descriptor numbers
        by_fd = {s.fileno(): s for s in sockets}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        try:
            events = poller.poll(timeout * 1000)
        except InterruptedError:
            return []
        return [by_fd[fd] for fd, _ in events]

    def exit_child(self, status: int) -> None:
        os._exit(status)


@dataclass
class WorkerProc:
    pid: int
    index: int
    generation: int
    slot: int
    report: socket.socket
    started: float
    last_beat: float
    ready: bool = False
    sessions: int = 0
    transfers: int = 0
    retiring: bool = False
    kill_at: float | None = None


@dataclass
class Supervisor:
    app: App
    plan: Plan
    listeners: dict[Endpoint, socket.socket]
    ops: ProcessOps = field(default_factory=ProcessOps)
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        self.workers: dict[int, WorkerProc] = {}
        self.generation = 1
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.exit_status = 0
        self.quick_deaths: collections.deque[float] = collections.deque()
        self.ready_announced = False
        self.reload_pending_since: float | None = None
        self._last_watchdog = 0.0

    # --- main loop

    def run(self) -> int:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                       signal.SIGUSR1):
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        log.info("supervisor %d starting %d workers on %s", os.getpid(), self.plan.workers,
                 ", ".join(str(e) for e in self.listeners))
        try:
            while True:
                self.maintain()
                if self.stopping and not self.workers:
                    break
                self.wait(1.0)
                self.dispatch_signals()
                self.reap()
        finally:
            signal.set_wakeup_fd(-1)
            for sock in self.listeners.values():
                sock.close()
            reader.close()
            writer.close()
        log.info("supervisor %d exiting with status %d", os.getpid(), self.exit_status)
        return self.exit_status

    def wait(self, timeout: float) -> None:
        reports = {w.report: w for w in self.workers.values()}
        for sock in self.ops.wait([self._wakeup[0], *reports], timeout):
            if sock is self._wakeup[0]:
                try:
                    self.signals.extend(sock.recv(64))
                except BlockingIOError:
                    pass
            else:
                self._read_reports(reports[sock])

    def _read_reports(self, worker: WorkerProc) -> None:
        while True:
            try:
                message = worker.report.recv(256).decode(errors="replace").strip()
            except (BlockingIOError, ConnectionError):
                return
            if not message:
                return
            worker.last_beat = self.ops.monotonic()
            if message == "ready":
                worker.ready = True
            elif message.startswith("hb "):
                parts = message.split()
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    worker.sessions, worker.transfers = int(parts[1]), int(parts[2])
            else:
                self.app.on_message(self.plan, message)

    def dispatch_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(f"received {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                self.app.reopen_logs()
                for worker in self.workers.values():
                    self.ops.kill(worker.pid, signal.SIGUSR1)
            # SIGCHLD only needs to wake the loop: reap() runs every pass.

    # --- housekeeping on every pass

    def maintain(self) -> None:
        now = self.ops.monotonic()
        if not self.stopping:
            self._kill_silent(now)
            self._spawn_missing(now)
            self._finish_reload()
        self._kill_overdue(now)
        self._report(now)

    def _current(self) -> list[WorkerProc]:
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.retiring]

    def _spawn_missing(self, now: float) -> None:
        present = {w.index for w in self._current()}
        for index in range(self.plan.workers):
            if index not in present:
                self.spawn(index, now)

    def spawn(self, index: int, now: float) -> None:
        used = {w.slot for w in self.workers.values()}
        slot = next((s for s in range(MAX_SLOTS) if s not in used), None)
        if slot is None:
            return  # retiring generations still hold every slot; retry next pass
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        gc.collect()
        gc.freeze()  # keep the heap's pages shared copy-on-write with the workers
        pid = self.ops.fork()
        if pid == 0:
            status = 1
            try:
                parent_end.close()
                self._become_worker()
                status = self.app.run_worker(self.plan, index, self.generation,
                                             list(self.listeners.values()), child_end, slot)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                self.ops.exit_child(status)
        child_end.close()
        parent_end.setblocking(False)
        self.workers[pid] = WorkerProc(pid, index, self.generation, slot, parent_end, now, now)
        log.debug("spawned worker %d (pid %d, generation %d)", index, pid, self.generation)

    def _become_worker(self) -> None:
        # The child must not react to the supervisor's signals or share its wake-up fd.
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        self._wakeup[0].close()
        self._wakeup[1].close()
        for worker in self.workers.values():
            worker.report.close()

    def _kill_silent(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if worker.kill_at is None and now - worker.last_beat > self.plan.worker_timeout:
                log.error("worker %d (pid %d) made no progress for %.0f s; killing it",
                          worker.index, worker.pid, now - worker.last_beat)
                self.ops.kill(worker.pid, signal.SIGKILL)
                worker.kill_at = now

    def _kill_overdue(self, now: float) -> None:
        for worker in self.workers.values():
            if worker.kill_at is not None and now > worker.kill_at:
                log.warning("worker %d (pid %d) did not finish draining in time; killing it",
                            worker.index, worker.pid)
                self.ops.kill(worker.pid, signal.SIGKILL)
                worker.kill_at = now + self.plan.worker_timeout  # then keep trying

    def _report(self, now: float) -> None:
        serving = self._current()
        if not self.ready_announced and serving and all(w.ready for w in serving) \
                and len(serving) == self.plan.workers:
            self.ready_announced = True
            log.info("ready: %d workers serving", len(serving))
            self.notifier.ready(self.status())
        if self.ready_announced:
            self.notifier.status(self.status())
        healthy = all(now - w.last_beat <= self.plan.worker_timeout
                      for w in self.workers.values() if w.kill_at is None)
        interval = self.notifier.watchdog_interval
        if interval and healthy and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.notifier.watchdog()

    def status(self) -> str:
        sessions = sum(w.sessions for w in self.workers.values())
        transfers = sum(w.transfers for w in self.workers.values())
        draining = sum(1 for w in self.workers.values() if w.retiring)
        text = f"{len(self._current())} workers, {sessions} sessions, {transfers} transfers"
        return text + (f", {draining} draining" if draining else "")

    # --- reaping and crash loops

    def reap(self) -> None:
        for pid, status in self.ops.reap():
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            worker.report.close()
            self.app.worker_exited(worker.slot)
            expected = worker.retiring or self.stopping
            if expected and status == 0:
                log.info("worker %d (pid %d) finished draining", worker.index, pid)
                continue
            log.error("worker %d (pid %d) exited with status %d", worker.index, pid, status)
            if status == EXIT_BOOT_FAILED and not expected:
                self.halt("a worker could not start (see the error above)")
            elif not expected and self.ops.monotonic() - worker.started < QUICK_DEATH:
                self._note_quick_death()

    def _note_quick_death(self) -> None:
        now = self.ops.monotonic()
        self.quick_deaths.append(now)
        while self.quick_deaths and now - self.quick_deaths[0] > CRASH_LOOP_WINDOW:
            self.quick_deaths.popleft()
        if len(self.quick_deaths) >= CRASH_LOOP_DEATHS:
            self.halt(f"{len(self.quick_deaths)} workers died within {QUICK_DEATH:.0f} s of "
                      f"starting in the last {CRASH_LOOP_WINDOW:.0f} s; stopping instead of "
                      "respawning in a loop")

    def halt(self, reason: str) -> None:
        log.critical("halting: %s", reason)
        self.exit_status = 1
        self.stop(reason, signal.SIGKILL)

    # --- stop and reload

    def stop(self, reason: str, signum: int = signal.SIGTERM) -> None:
        if not self.stopping:
            log.info("stopping (%s): draining up to %.0f s", reason, self.plan.shutdown_timeout)
            self.notifier.stopping()
            self.stopping = True
        # Close our copies so the kernel refuses new connections at once
        # instead of queueing them for workers that will not accept them.
        for sock in self.listeners.values():
            sock.close()
        deadline = self.ops.monotonic() + self.plan.shutdown_timeout + KILL_GRACE
        for worker in self.workers.values():
            self.ops.kill(worker.pid, signum)
            worker.kill_at = min(worker.kill_at or deadline, deadline)

    def reload(self) -> None:
        if self.stopping:
            return
        log.info("reloading configuration")
        self.notifier.reloading()
        try:
            plan = self.app.load()
            added = [e for e in plan.endpoints if e not in self.listeners]
            new_listeners = self.app.bind(plan, added) if added else {}
        except Exception as err:
            log.error("reload failed, still serving with the previous configuration:\n%s", err)
            self.notifier.ready(self.status())
            return
        for endpoint in [e for e in self.listeners if e not in plan.endpoints]:
            self.listeners.pop(endpoint).close()
        self.listeners.update(new_listeners)
        for worker in self._current():
            worker.retiring = True  # retired (SIGUSR2) once the new generation is ready
        self.plan = plan
        self.generation += 1
        self.reload_pending_since = self.ops.monotonic()
        self._spawn_missing(self.ops.monotonic())

    def _finish_reload(self) -> None:
        if self.reload_pending_since is None:
            return
        current = self._current()
        timed_out = self.ops.monotonic() - self.reload_pending_since > self.plan.worker_timeout
        if not (all(w.ready for w in current) or timed_out):
            return
        self.reload_pending_since = None
        deadline = self.ops.monotonic() + self.plan.shutdown_timeout + KILL_GRACE
        for worker in self.workers.values():
            if worker.retiring and worker.kill_at is None:
                self.ops.kill(worker.pid, signal.SIGUSR2)
                worker.kill_at = deadline
        log.info("reload done: generation %d serving", self.generation)
        self.notifier.ready(self.status())


def _ignore(signum: int, frame: Any) -> None:
    """Installed so the signal is delivered to the wake-up fd."""

