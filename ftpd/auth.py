"""Password hashing and the virtual-user authorizer handed to pyftpdlib.

Passwords are stored as scrypt hashes (hashlib, memory-hard). Verification
is slow on purpose, so the handler runs it in a thread (`offload`) and never
on the event loop; hashlib releases the GIL while it computes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from pyftpdlib.authorizers import AuthenticationFailed

from . import users as users_mod
from .users import User

log = logging.getLogger("ftpd.auth")

# scrypt N=2^15, r=8, p=1: ~32 MiB and tens of milliseconds per guess, far
# costlier for an attacker than SHA-512 crypt's 5000 rounds.
DEFAULT_LOG_N = 15
_HASH = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d+),r=(?P<r>\d+),p=(?P<p>\d+)\$(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<hash>[A-Za-z0-9+/=]+)")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + (1 << 20), dklen=32)


def hash_password(password: str, log_n: int = DEFAULT_LOG_N) -> str:
    """A new salted scrypt hash string for `password`."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, log_n, 8, 1)
    return f"$scrypt$ln={log_n},r=8,p=1${_b64(salt)}${_b64(digest)}"


def hash_problem(stored: str) -> str | None:
    """Why `stored` is not a usable hash, or None."""
    m = _HASH.fullmatch(stored)
    if not m:
        return "not a password hash ($scrypt$...)"
    if not 10 <= int(m["ln"]) <= 20 or not 1 <= int(m["r"]) <= 32 or not 1 <= int(m["p"]) <= 16:
        return "scrypt parameters out of range (ln 10-20, r 1-32, p 1-16)"
    return None


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a stored hash."""
    m = _HASH.fullmatch(stored)
    if not m:
        return False
    digest = _scrypt(password, base64.b64decode(m["salt"]), int(m["ln"]), int(m["r"]), int(m["p"]))
    return hmac.compare_digest(digest, base64.b64decode(m["hash"]))


# A password that never matches, so unknown users cost the same time as known
# ones and their existence is not revealed by timing.
_DUMMY_HASH = ("$scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA=="
               "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


class VerificationCache:
    """Coalesces identical concurrent verifications and remembers successes briefly.

    A busy account (a backup job logging in every few seconds, a storm of
    clients with the same credentials) pays the KDF once, not per login.
    Entries are keyed by a keyed hash (a per-process random key) of the user,
    the stored hash and the password, so no password is kept, and a changed
    password or users file never matches an old entry. Failures are never
    remembered: each wrong guess costs a KDF.
    """

    MAX_ENTRIES = 10000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._secret = os.urandom(32)
        self._lock = threading.Lock()
        self._ok: dict[bytes, float] = {}
        self._inflight: dict[bytes, Future[bool]] = {}

    def key(self, name: str, stored: str, password: str) -> bytes:
        message = b"\0".join(s.encode("utf-8", "surrogatepass") for s in (name, stored, password))
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def clear(self) -> None:
        with self._lock:
            self._ok.clear()

    def verify(self, key: bytes, compute: Callable[[], bool]) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._ok.get(key, 0.0) > now:
                return True
            pending = self._inflight.get(key)
            if pending is None:
                mine: Future[bool] = Future()
                self._inflight[key] = mine
        if pending is not None:
            return pending.result()
        try:
            ok = compute()
        except BaseException as err:
            with self._lock:
                del self._inflight[key]
            mine.set_exception(err)
            raise
        with self._lock:
            del self._inflight[key]
            if ok and self.ttl > 0:
                if len(self._ok) >= self.MAX_ENTRIES:
                    self._ok = {k: t for k, t in self._ok.items() if t > now}
                self._ok[key] = now + self.ttl
        mine.set_result(ok)
        return ok


ANONYMOUS_NAMES = ("anonymous", "ftp")
ANONYMOUS_PERMISSIONS = "elr"


@dataclass(frozen=True)
class Anonymous:
    """Anonymous access: read-only under `root`, uploads (STOR/STOU only) in `upload_dir`."""

    root: str
    upload_dir: str  # absolute, under root; "" = no uploads

    def may_upload(self, path: str) -> bool:
        if not self.upload_dir:
            return False
        real = os.path.realpath(path)
        base = os.path.realpath(self.upload_dir)
        return real.startswith(base.rstrip(os.sep) + os.sep)


class VirtualAuthorizer:
    """pyftpdlib authorizer over the users file.

    The file is re-read when its mtime changes, so `ftpd passwd` takes effect
    for the next login without a reload. If it becomes unreadable or invalid,
    the last good table stays in use and the problem is logged once.
    """

    def __init__(self, path: str, table: dict[str, User], cache_seconds: float = 0.0,
                 anonymous: Anonymous | None = None) -> None:
        self.path = path
        self.anonymous = anonymous
        self._users = table
        self._stamp = self._stat()
        self._lock = threading.Lock()  # verify() runs in threads
        self.cache = VerificationCache(cache_seconds)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return
        with self._lock:
            self._stamp = stamp
            try:
                self._users = users_mod.load(self.path)
                self.cache.clear()
                log.info("users file %s reloaded: %d users", self.path, len(self._users))
            except users_mod.UsersError as err:
                log.error("users file %s not reloaded, keeping the previous users: %s",
                          self.path, err)

    def user(self, name: str) -> User | None:
        return self._users.get(name)

    def is_anonymous(self, name: str) -> bool:
        return self.anonymous is not None and name in ANONYMOUS_NAMES

    def verify(self, name: str, password: str) -> bool:
        """Slow: call off the event loop."""
        if self.is_anonymous(name):
            return True  # any password (by custom an e-mail address)
        self.refresh()
        user = self._users.get(name)
        stored = user.password if user else _DUMMY_HASH
        ok = self.cache.verify(self.cache.key(name, stored, password),
                               lambda: verify_password(password, stored))
        return ok and user is not None

    # --- the interface pyftpdlib's FTPHandler calls

    def validate_authentication(self, username: str, password: str, handler: object) -> None:
        if not self.verify(username, password):
            raise AuthenticationFailed("Authentication failed.")

    def has_user(self, username: str) -> bool:
        return username in self._users or self.is_anonymous(username)

    def get_home_dir(self, username: str) -> str:
        if self.anonymous is not None and self.is_anonymous(username):
            return self.anonymous.root
        return self._users[username].root

    def get_msg_login(self, username: str) -> str:
        return "Login successful."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."

    def get_perms(self, username: str) -> str:
        if self.is_anonymous(username):
            return ANONYMOUS_PERMISSIONS
        user = self._users.get(username)
        return user.permissions if user else ""

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        if self.anonymous is not None and self.is_anonymous(username) and perm == "w":
            return path is not None and self.anonymous.may_upload(path)
        return perm in self.get_perms(username)

    def impersonate_user(self, username: str, password: str) -> None:
        pass

    def terminate_impersonation(self, username: str) -> None:
        pass


