"""Brute-force defence: ban an address after repeated failed logins, daemon-wide.

Workers report each failed login to the supervisor, which counts failures per
address in a sliding window and, past `max_login_failures`, writes a ban into
a shared memory table that every worker reads when a client connects. The
supervisor is the table's only writer, and it outlives worker generations,
so bans hold across all workers and across reloads.

The table is open-addressed by a keyed hash of the address (16 bytes), with
the ban's expiry on the system-wide monotonic clock next to it.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import mmap
import os
import struct
import time
from dataclasses import dataclass

CAPACITY = 8192  # bans held at once; the oldest expired entries are reused first
_ENTRY = struct.Struct("=16sd")


def normalize(ip: str) -> str:
    """One spelling per address (IPv4-mapped IPv6 as IPv4)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class BanTable:
    """Shared between the supervisor (writer) and workers (readers)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, capacity * _ENTRY.size)
        self._key = os.urandom(16)

    def unmap(self) -> None:
        """Drop this process's view (a jailed session process must not reach it)."""
        self._map.close()

    def _digest(self, ip: str) -> bytes:
        return hashlib.blake2b(normalize(ip).encode(), key=self._key, digest_size=16).digest()

    def _probe(self, digest: bytes) -> range:
        start = int.from_bytes(digest[:8], "little") % self.capacity
        return range(start, start + min(64, self.capacity))

    def banned_for(self, ip: str, now: float | None = None) -> float:
        """Seconds left on the ban of `ip` (0 when not banned)."""
        now = time.monotonic() if now is None else now
        digest = self._digest(ip)
        for i in self._probe(digest):
            key, expiry = _ENTRY.unpack_from(self._map, (i % self.capacity) * _ENTRY.size)
            if key == digest:
                return max(0.0, expiry - now)
            if key == bytes(16):
                return 0.0
        return 0.0

    def ban(self, ip: str, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        digest = self._digest(ip)
        slots = [i % self.capacity for i in self._probe(digest)]
        chosen = None
        for i in slots:
            key, expiry = _ENTRY.unpack_from(self._map, i * _ENTRY.size)
            if key == digest or key == bytes(16):
                chosen = i
                break
            if chosen is None and expiry <= now:
                chosen = i  # an expired ban's place can be reused
        if chosen is None:  # every place in reach holds a live ban: replace the soonest to end
            chosen = min(slots, key=lambda i: _ENTRY.unpack_from(self._map, i * _ENTRY.size)[1])
        _ENTRY.pack_into(self._map, chosen * _ENTRY.size, digest, now + seconds)


@dataclass(frozen=True)
class BanPolicy:
    max_failures: int  # 0 = never ban
    window: float
    ban_time: float


class FailureTracker:
    """Supervisor side: failed logins per address in a sliding window."""

    def __init__(self, table: BanTable) -> None:
        self.table = table
        self._failures: dict[str, collections.deque[float]] = {}

    def failed(self, ip: str, policy: BanPolicy, now: float | None = None) -> bool:
        """Count one failure; True when it makes `ip` banned."""
        if policy.max_failures <= 0:
            return False
        now = time.monotonic() if now is None else now
        ip = normalize(ip)
        times = self._failures.setdefault(ip, collections.deque())
        times.append(now)
        while times and now - times[0] > policy.window:
            times.popleft()
        if len(self._failures) > 100000:  # bound memory under a distributed attack
            self._failures = {k: v for k, v in self._failures.items()
                              if v and now - v[-1] <= policy.window}
        if len(times) >= policy.max_failures:
            del self._failures[ip]
            self.table.ban(ip, policy.ban_time, now)
            return True
        return False
