"""FTP client run inside the test container (Debian's python3, stdlib only).

Prints one JSON object per line on stdout, so that a test can follow a
transfer while it runs: {"event": "started"}, then {"event": "done", ...} or
{"event": "error", "message": ...} (exit status 1).

    ftpclient.py banner
    ftpclient.py login USER PASSWORD
    ftpclient.py badlogin USER PASSWORD COUNT
    ftpclient.py upload USER PASSWORD NAME SIZE [RATE]     # RATE bytes/s, 0 = full speed
    ftpclient.py download USER PASSWORD NAME [RATE]
    ftpclient.py hold USER PASSWORD                        # until stdin closes
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

HOST = "127.0.0.1"
BLOCK = 32 * 1024
TIMEOUT = float(os.environ.get("FTPCLIENT_TIMEOUT", "30"))


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def connect(user: str, password: str) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(HOST, 21)
    ftp.login(user, password)
    return ftp


def pattern(size: int) -> bytes:
    """Deterministic, incompressible-looking content of `size` bytes."""
    out = bytearray()
    block = b"ftpd"
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


class Paced(io.RawIOBase):
    """A readable file that hands out `data` no faster than `rate` bytes/s."""

    def __init__(self, data: bytes, rate: int, on_first: Callable[[], None]) -> None:
        self.data = data
        self.rate = rate
        self.offset = 0
        self.started = 0.0
        self.on_first = on_first

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.offset == 0:
            self.started = time.monotonic()
            self.on_first()
        elif self.rate:
            due = self.started + self.offset / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
        chunk = self.data[self.offset:self.offset + (size if size > 0 else BLOCK)]
        self.offset += len(chunk)
        return chunk


def upload(user: str, password: str, name: str, size: str, rate: str = "0") -> None:
    data = pattern(int(size))
    ftp = connect(user, password)
    source = Paced(data, int(rate), lambda: emit("started"))
    started = time.monotonic()
    reply = ftp.storbinary(f"STOR {name}", source, blocksize=BLOCK)
    emit("done", reply=reply, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
         seconds=round(time.monotonic() - started, 3))
    ftp.quit()


def download(user: str, password: str, name: str, rate: str = "0") -> None:
    ftp = connect(user, password)
    digest = hashlib.sha256()
    received = 0
    started = time.monotonic()

    def sink(chunk: bytes) -> None:
        nonlocal received
        if received == 0:
            emit("started")
        received += len(chunk)
        digest.update(chunk)
        if int(rate):
            time.sleep(max(0.0, started + received / int(rate) - time.monotonic()))

    reply = ftp.retrbinary(f"RETR {name}", sink, blocksize=BLOCK)
    emit("done", reply=reply, bytes=received, sha256=digest.hexdigest(),
         seconds=round(time.monotonic() - started, 3))
    ftp.quit()


def bad_login(user: str, password: str) -> bool:
    """One login attempt that should fail; True if it did."""
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(HOST, 21)
    try:
        ftp.login(user, password)
    except ftplib.error_perm:
        return True
    finally:
        ftp.close()
    return False


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    try:
        if command == "banner":
            ftp = ftplib.FTP(timeout=TIMEOUT)
            emit("done", banner=ftp.connect(HOST, 21))
            ftp.quit()
        elif command == "login":
            ftp = connect(*args)
            emit("done", pwd=ftp.pwd())
            ftp.quit()
        elif command == "badlogin":
            user, password, count = args
            # ftpd delays each failure by seconds: fail in parallel.
            with ThreadPoolExecutor(int(count)) as pool:
                failed = list(pool.map(lambda _: bad_login(user, password), range(int(count))))
            emit("done", failures=sum(failed))
        elif command == "upload":
            upload(*args)
        elif command == "download":
            download(*args)
        elif command == "hold":
            ftp = connect(*args)
            emit("ready")
            sys.stdin.read()
            ftp.quit()
            emit("done")
        else:
            emit("error", message=f"unknown command {command}")
            return 2
    except (OSError, EOFError, ftplib.Error) as err:
        emit("error", message=f"{type(err).__name__}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
