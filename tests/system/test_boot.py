"""The harness itself: a container boots to "running" and powers off cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .container import Container

pytestmark = pytest.mark.system


def test_boot_and_poweroff(rootfs: Path) -> None:
    container = Container(rootfs)
    with container:
        container.boot(timeout=60)
        assert container.leader and container.leader > 1
        assert container.wait_until_running(timeout=60) == "running"
        pid1 = container.run("cat", "/proc/1/comm").stdout.strip()
        assert pid1 == "systemd"
        # --private-network: nothing but loopback inside.
        links = container.run("ip", "-o", "link").stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        process = container.process
        assert process is not None
        started = time.monotonic()
    # __exit__ powered it off: nspawn is gone and nothing is left behind.
    assert process.poll() is not None
    assert time.monotonic() - started < 30
    assert not container.workdir.exists()
    assert not any(cgroup.exists() for cgroup in container._cgroups)
