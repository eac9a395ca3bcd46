"""An FTP conversation driven step by step; runs inside a lab namespace.

Reads one JSON request per line on stdin and answers each with one JSON line
on stdout, so a test can hold a session open across steps (keep a passive
port busy, open a data connection and send nothing, ...). Requests:

    {"op": "open", "host": H, "port": P, "user": U, "password": W} -> {"reply": last reply}
    {"op": "send", "line": "PASV"}          -> {"reply": "227 ..."}
    {"op": "reply", "timeout": 5}           -> {"reply": next reply} (e.g. a 425 after 150)
    {"op": "data_connect", "host": H, "port": P} -> {"error": ""}  (kept open, silent)
    {"op": "data_read", "timeout": 5}       -> {"bytes": n}  (reads to EOF, then closes)
    {"op": "data_close"}                    -> {}
    {"op": "listen"}                        -> {"port": p}  (for PORT/EPRT)
    {"op": "accept", "timeout": 5}          -> {"peer": [ip, port]} or {"error": "timeout"}
    {"op": "quit"}                          -> {"reply": "221 ..."}

Only the standard library: it runs with `python -I`.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from typing import Any

_FINAL = re.compile(rb"^\d{3} ")


class Driver:
    def __init__(self) -> None:
        self.control: socket.socket | None = None
        self.reader: Any = None
        self.data: socket.socket | None = None
        self.listener: socket.socket | None = None

    def _reply(self, timeout: float = 10.0) -> str:
        assert self.control is not None
        self.control.settimeout(timeout)
        lines = []
        while True:
            line = self.reader.readline()
            if not line:
                lines.append(b"<closed>")
                break
            lines.append(line.rstrip(b"\r\n"))
            if _FINAL.match(line) and (len(lines) == 1 or line[:3] == lines[0][:3]):
                break
        return "\n".join(x.decode("utf-8", "replace") for x in lines)

    def op_open(self, host: str, port: int, user: str, password: str) -> dict[str, Any]:
        self.control = socket.create_connection((host, port), timeout=10)
        self.reader = self.control.makefile("rb")
        self._reply()
        self.op_send(f"USER {user}")
        return self.op_send(f"PASS {password}")

    def op_send(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.control is not None
        self.control.sendall(line.encode() + b"\r\n")
        return {"reply": self._reply(timeout)}

    def op_reply(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return {"reply": self._reply(timeout)}
        except TimeoutError:
            return {"reply": "", "error": "timeout"}

    def op_data_connect(self, host: str, port: int) -> dict[str, Any]:
        try:
            self.data = socket.create_connection((host, port), timeout=5)
        except OSError as err:
            return {"error": err.strerror or str(err)}
        return {"error": ""}

    def op_data_read(self, timeout: float = 10.0) -> dict[str, Any]:
        sock = self.data
        assert sock is not None
        sock.settimeout(timeout)
        total = 0
        while chunk := sock.recv(65536):
            total += len(chunk)
        sock.close()
        self.data = None
        return {"bytes": total}

    def op_data_close(self) -> dict[str, Any]:
        if self.data is not None:
            self.data.close()
            self.data = None
        return {}

    def op_listen(self) -> dict[str, Any]:
        self.listener = socket.socket()
        self.listener.bind(("0.0.0.0", 0))
        self.listener.listen(4)
        return {"port": self.listener.getsockname()[1]}

    def op_accept(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.listener is not None
        self.listener.settimeout(timeout)
        try:
            self.data, peer = self.listener.accept()
        except TimeoutError:
            return {"error": "timeout"}
        return {"peer": list(peer[:2])}

    def op_quit(self) -> dict[str, Any]:
        result = self.op_send("QUIT")
        assert self.control is not None
        self.control.close()
        return result


def main() -> None:
    driver = Driver()
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            result = getattr(driver, f"op_{op}")(**request)
        except Exception as err:  # report, keep the conversation going
            result = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
