"""Splitting the passive range among workers and binding inside a slice."""

from __future__ import annotations

import socket

import pytest

from ftpd.passive import bind_listener, worker_slice
from tests.conftest import free_range


@pytest.mark.parametrize("size,workers", [(10, 1), (10, 3), (1000, 7), (4, 4), (65, 64)])
def test_slices_are_disjoint_and_cover_the_range(size, workers):
    ports = range(50000, 50000 + size)
    slices = [worker_slice(ports, workers, i) for i in range(workers)]
    flat = [p for s in slices for p in s]
    assert sorted(flat) == list(ports) and len(set(flat)) == len(flat)
    assert max(len(s) for s in slices) - min(len(s) for s in slices) <= 1


def test_slice_needs_a_port_per_worker():
    with pytest.raises(ValueError):
        worker_slice(range(50000, 50002), 3, 0)


def test_bind_skips_busy_ports_and_reports_exhaustion():
    ports = free_range(3)
    taken = []
    for _ in ports:
        sock = bind_listener(socket.AF_INET, "127.0.0.1", ports, 5)
        assert sock is not None and sock.getsockname()[1] in ports
        taken.append(sock)
    assert len({s.getsockname()[1] for s in taken}) == 3
    assert bind_listener(socket.AF_INET, "127.0.0.1", ports, 5) is None
    taken.pop().close()
    again = bind_listener(socket.AF_INET, "127.0.0.1", ports, 5)
    assert again is not None
    for sock in [*taken, again]:
        sock.close()


def test_bind_does_not_share_a_port_bound_but_not_yet_listening_elsewhere():
    # Another process's socket bound with SO_REUSEADDR and listening: listen()
    # on ours must fail and the next port be tried, never a shared port.
    ports = free_range(2)
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("127.0.0.1", ports[0]))
    other.listen(1)
    try:
        for _ in range(5):
            sock = bind_listener(socket.AF_INET, "127.0.0.1", ports, 5)
            assert sock is not None and sock.getsockname()[1] == ports[1]
            sock.close()
    finally:
        other.close()
