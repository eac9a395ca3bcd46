"""Workload sizes and durations: the full run and the --quick smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024 ** 3
MIB = 1024 ** 2


@dataclass(frozen=True)
class Profile:
    name: str
    file_bytes: int  # size of the RETR/STOR file
    reps: int  # timed transfer pairs per direction; the median is reported
    session_clients: tuple[int, ...]  # concurrent clients of the session-rate workload
    session_duration_s: float
    session_warmup_s: float
    storm_clients: int
    storm_reps: int  # login storms per server; the median is reported
    memory_steps: tuple[int, ...]  # idle sessions at which PSS is reported
    capacity_steps: tuple[int, ...]  # further steps of the capacity workload
    capacity_target: int
    hold_concurrency: int  # logins in flight while opening idle sessions

    def hold_steps(self) -> list[int]:
        return sorted(set(self.memory_steps) | set(self.capacity_steps))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Profile(
    name="full",
    file_bytes=1 * GIB,
    reps=11,
    session_clients=(50, 200),
    session_duration_s=15.0,
    session_warmup_s=2.0,
    storm_clients=300,
    storm_reps=3,
    memory_steps=(0, 200, 1000),
    capacity_steps=(2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000),
    capacity_target=10000,
    hold_concurrency=30,
)

QUICK = Profile(
    name="quick",
    file_bytes=256 * MIB,
    reps=1,
    session_clients=(50, 200),
    session_duration_s=3.0,
    session_warmup_s=1.0,
    storm_clients=300,
    storm_reps=1,
    memory_steps=(0, 200, 1000),
    capacity_steps=(),
    capacity_target=10000,
    hold_concurrency=30,
)

PROFILES = {p.name: p for p in (FULL, QUICK)}
