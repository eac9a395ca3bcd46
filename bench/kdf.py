"""What one password check costs: ftpd's hash against the peers' SHA-512 crypt.

ftpd must win the login workloads by design, not with a cheaper key derivation.
This times, on the machine of the run and with the run's password, the exact
work of one check on each side: scrypt with the parameters and salt of the hash
`ftpd passwd` wrote (hashlib.scrypt, what ftpd calls; the result is compared with
the stored hash, so the timed call is the real check), and glibc's crypt(3) of a
"$6$" setting with its default 5,000 rounds, which pam_unix runs for the peers'
SHA-512 crypt hash. Standard library and libcrypt only.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import hashlib
import hmac
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SCRYPT = re.compile(r"\$scrypt\$ln=(?P<ln>\d+),r=(?P<r>\d+),p=(?P<p>\d+)\$"
                     r"(?P<salt>[A-Za-z0-9+/=]+)\$(?P<hash>[A-Za-z0-9+/=]+)")
SCRYPT_REPS = 5
CRYPT_REPS = 20


@functools.cache  # loaded once: the timed call is crypt() alone
def _libcrypt_crypt() -> Callable[[bytes, bytes], bytes | None]:
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return lib.crypt


def sha512_crypt(password: str, salt: str) -> str:
    """crypt(3) with the setting "$6$salt" (5,000 rounds, the pam_unix default)."""
    out = _libcrypt_crypt()(password.encode(), f"$6${salt}".encode())
    if not out or not out.startswith(b"$6$"):
        raise RuntimeError("libcrypt has no SHA-512 crypt")
    return out.decode()


def scrypt_check(password: str, stored: str) -> bool:
    """ftpd's verification of `password` against `stored`, as ftpd/auth.py does it."""
    m = _SCRYPT.fullmatch(stored)
    if m is None:
        raise ValueError(f"not an ftpd scrypt hash: {stored[:20]}...")
    n, r = 1 << int(m["ln"]), int(m["r"])
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(m["salt"]), n=n, r=r,
                            p=int(m["p"]), maxmem=256 * n * r + (1 << 20), dklen=32)
    return hmac.compare_digest(digest, base64.b64decode(m["hash"]))


def stored_hash(users_file: Path) -> str:
    m = _SCRYPT.search(users_file.read_text())
    if m is None:
        raise RuntimeError(f"{users_file}: no scrypt hash")
    return m.group(0)


def _median_seconds(call: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(users_file: Path, password: str) -> dict[str, Any]:
    """Median milliseconds of one check each, and how many times costlier ftpd's is."""
    stored = stored_hash(users_file)
    if not scrypt_check(password, stored):
        raise RuntimeError("the password does not match ftpd's stored hash")
    salt = base64.b64encode(os.urandom(12), altchars=b"./").decode()
    ftpd_s = _median_seconds(lambda: scrypt_check(password, stored), SCRYPT_REPS)
    crypt_s = _median_seconds(lambda: sha512_crypt(password, salt), CRYPT_REPS)
    return {
        "ftpd_scheme": stored.rsplit("$", 2)[0],
        "ftpd_ms": round(ftpd_s * 1000, 2),
        "sha512_crypt_ms": round(crypt_s * 1000, 2),
        "ratio": round(ftpd_s / crypt_s, 1) if crypt_s > 0 else None,
    }
