"""Supervision logic with a fake OS and a fake clock: no fork, no sleep."""

from __future__ import annotations

import signal

import pytest

from ftpd.notify import Notifier
from ftpd.settings import Endpoint
from ftpd.supervisor import EXIT_BOOT_FAILED, Plan, Supervisor


class FakeOps:
    def __init__(self) -> None:
        self.now = 1000.0
        self.next_pid = 100
        self.killed: list[tuple[int, int]] = []
        self.exited: list[tuple[int, int]] = []

    def fork(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def kill(self, pid: int, signum: int) -> None:
        self.killed.append((pid, signum))

    def reap(self) -> list[tuple[int, int]]:
        exited, self.exited = self.exited, []
        return exited

    def monotonic(self) -> float:
        return self.now

    def wait(self, sockets, timeout):  # pragma: no cover - not used by these tests
        return []


class FakeNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, *fields: str) -> None:
        self.sent.extend(fields)


class FakeApp:
    def __init__(self, plans: list[Plan | Exception]) -> None:
        self.plans = plans
        self.exited_slots: list[int] = []

    def load(self) -> Plan:
        plan = self.plans.pop(0)
        if isinstance(plan, Exception):
            raise plan
        return plan

    def bind(self, plan, endpoints):
        return {}

    def run_worker(self, *args):  # pragma: no cover - children never run here
        raise AssertionError

    def worker_exited(self, slot: int) -> None:
        self.exited_slots.append(slot)

    def on_message(self, plan, message: str) -> None:
        pass

    def reopen_logs(self) -> None:
        pass


def plan(workers: int = 2) -> Plan:
    return Plan(workers=workers, endpoints=(Endpoint("127.0.0.1", 2121),),
                shutdown_timeout=30, worker_timeout=10)


@pytest.fixture
def sup():
    supervisor = Supervisor(FakeApp([]), plan(), {}, ops=FakeOps(), notifier=FakeNotifier())
    supervisor.maintain()
    return supervisor


def make_ready(sup: Supervisor) -> None:
    for worker in sup.workers.values():
        worker.ready = True
        worker.last_beat = sup.ops.now


def test_spawns_workers_and_announces_ready_only_when_all_serve(sup):
    assert len(sup.workers) == 2
    assert "READY=1" not in sup.notifier.sent
    next(iter(sup.workers.values())).ready = True
    sup.maintain()
    assert "READY=1" not in sup.notifier.sent
    make_ready(sup)
    sup.maintain()
    assert "READY=1" in sup.notifier.sent
    assert "STATUS=2 workers, 0 sessions, 0 transfers" in sup.notifier.sent


def test_dead_worker_is_replaced(sup):
    make_ready(sup)
    pid = next(iter(sup.workers))
    sup.ops.now += 60
    sup.ops.exited.append((pid, -9))
    sup.reap()
    sup.maintain()
    assert pid not in sup.workers and len(sup.workers) == 2
    assert not sup.stopping
    assert len(sup.app.exited_slots) == 1
    slots = [w.slot for w in sup.workers.values()]
    assert len(set(slots)) == 2 and sup.app.exited_slots[0] in slots  # freed slot reused


def test_crash_loop_halts_instead_of_spinning(sup):
    for _ in range(5):
        pid = max(sup.workers)
        sup.ops.now += 1
        sup.ops.exited.append((pid, 1))
        sup.reap()
        if sup.stopping:
            break
        sup.maintain()
    assert sup.stopping and sup.exit_status == 1


def test_boot_failure_halts_at_once(sup):
    pid = next(iter(sup.workers))
    sup.ops.exited.append((pid, EXIT_BOOT_FAILED))
    sup.reap()
    assert sup.stopping and sup.exit_status == 1


def test_silent_worker_is_killed(sup):
    make_ready(sup)
    silent, talking = list(sup.workers.values())
    sup.ops.now += 11
    talking.last_beat = sup.ops.now
    sup.maintain()
    assert (silent.pid, signal.SIGKILL) in sup.ops.killed
    assert (talking.pid, signal.SIGKILL) not in sup.ops.killed


def test_reload_starts_new_generation_then_retires_old(sup):
    make_ready(sup)
    sup.maintain()
    old = set(sup.workers)
    sup.app.plans.append(plan(workers=3))
    sup.reload()
    assert "RELOADING=1" in sup.notifier.sent
    new = set(sup.workers) - old
    assert len(new) == 3 and sup.generation == 2
    assert not any(sig == signal.SIGUSR2 for _, sig in sup.ops.killed)  # new ones not ready yet
    for pid in new:
        sup.workers[pid].ready = True
    sup.maintain()
    assert {pid for pid, sig in sup.ops.killed if sig == signal.SIGUSR2} == old
    assert sup.status().startswith("3 workers")


def test_failed_reload_keeps_the_old_generation(sup):
    make_ready(sup)
    before = set(sup.workers)
    sup.app.plans.append(ValueError("ftpd.toml: server.workers: bad"))
    sup.reload()
    sup.maintain()
    assert set(sup.workers) == before and sup.generation == 1
    assert not sup.ops.killed


def test_stop_signals_workers_and_exits_when_they_are_gone(sup):
    make_ready(sup)
    sup.signals.append(signal.SIGTERM)
    sup.dispatch_signals()
    assert sup.stopping and "STOPPING=1" in sup.notifier.sent
    assert {sig for _, sig in sup.ops.killed} == {signal.SIGTERM}
    sup.ops.exited.extend((pid, 0) for pid in list(sup.workers))
    sup.reap()
    sup.maintain()
    assert not sup.workers and sup.exit_status == 0
