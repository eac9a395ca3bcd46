"""Session limits that hold daemon-wide, whichever worker a client lands on.

pyftpdlib counts connections per process (#411), so with N workers a client
could open N times its share. Here one shared memory table is mapped before
forking, with one column per worker slot and one row per counter: the total
sessions, per-client-address counts and per-user counts (hashed into
buckets). A worker writes only its own column; a check sums a row (one
contiguous run, one C call) under a POSIX record lock, so check-and-claim is
atomic across processes. When a worker dies, its column is zeroed, so its
sessions are released even if it was killed.

Buckets are hashed with a per-daemon random key: a client cannot aim its
address at another's bucket. Two addresses sharing a bucket only make the
limit stricter, never looser.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass

BUCKETS = 16384
SLOTS = 512  # two full generations of the most workers allowed (256)
_CELL = struct.Struct("=I")


@dataclass(frozen=True)
class Limits:
    max_sessions: int
    per_ip: int  # 0 = no limit
    per_user: int  # 0 = no limit


class SessionTable:
    """Shared counters: a column per worker slot; rows: total, IP buckets, user buckets."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.rows = 1 + 2 * BUCKETS
        self._row = struct.Struct(f"={slots}I")
        # MAP_SHARED|MAP_ANONYMOUS: shared with the workers forked later; only
        # the pages of counters actually used become resident.
        self._map = mmap.mmap(-1, self.rows * self._row.size)
        self._key = os.urandom(16)
        # A lock file shared by fork; lockf locks are per process, so they
        # exclude other workers (an flock on a shared descriptor would not).
        self._lock_file = tempfile.TemporaryFile()
        self.slot = -1  # set in each worker

    def _offset(self, slot: int, row: int) -> int:
        return row * self._row.size + slot * _CELL.size

    def _add(self, row: int, delta: int) -> None:
        offset = self._offset(self.slot, row)
        value = _CELL.unpack_from(self._map, offset)[0] + delta
        _CELL.pack_into(self._map, offset, max(0, value))

    def _sum(self, row: int) -> int:
        return sum(self._row.unpack_from(self._map, row * self._row.size))

    def _bucket(self, kind: bytes, value: str) -> int:
        digest = hashlib.blake2b(kind + value.encode("utf-8", "replace"), key=self._key,
                                 digest_size=8).digest()
        base = 1 if kind == b"ip" else 1 + BUCKETS
        return base + int.from_bytes(digest, "little") % BUCKETS

    def _locked(self) -> _Lock:
        return _Lock(self._lock_file.fileno())

    def open_session(self, ip: str, limits: Limits) -> str | None:
        """Claim a session for `ip`; None on success, else the reason it is refused."""
        bucket = self._bucket(b"ip", ip)
        with self._locked():
            if self._sum(0) >= limits.max_sessions:
                return "too many sessions on this server"
            if limits.per_ip and self._sum(bucket) >= limits.per_ip:
                return "too many sessions from your address"
            self._add(0, 1)
            self._add(bucket, 1)
        return None

    def close_session(self, ip: str) -> None:
        with self._locked():
            self._add(0, -1)
            self._add(self._bucket(b"ip", ip), -1)

    def claim_user(self, user: str, limit: int) -> bool:
        """Count a login of `user`; False (nothing counted) when at `limit`."""
        bucket = self._bucket(b"user", user)
        with self._locked():
            if limit and self._sum(bucket) >= limit:
                return False
            self._add(bucket, 1)
        return True

    def release_user(self, user: str) -> None:
        with self._locked():
            self._add(self._bucket(b"user", user), -1)

    def sessions(self) -> int:
        return self._sum(0)

    def unmap(self) -> None:
        """Drop this process's view (a jailed session process must not reach it)."""
        self._map.close()
        self._lock_file.close()

    def clear_slot(self, slot: int) -> None:
        """Forget what a dead worker held (called on the supervisor's side)."""
        zero = _CELL.pack(0)
        with self._locked():
            for row in range(self.rows):
                offset = self._offset(slot, row)
                if self._map[offset:offset + _CELL.size] != zero:
                    self._map[offset:offset + _CELL.size] = zero


class _Lock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)
