"""The virtual users file: reading, validating and writing it.

Format (TOML, written by `ftpd passwd`, editable by hand)::

    [users.alice]
    password = "$scrypt$ln=15,r=8,p=1$<salt>$<hash>"
    root = "/srv/ftp/alice"
    permissions = "elradfmwMT"

Optional per-user overrides: `max_sessions` (concurrent sessions),
`download_rate` and `upload_rate` (bytes/s), `umask` ("027"), and
`tls = { require = "none" }`.

Permission letters are pyftpdlib's: e (CWD), l (LIST), r (RETR), a (APPE),
d (DELE/RMD), f (RNFR/RNTO), m (MKD), w (STOR/STOU), M (SITE CHMOD),
T (MFMT).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from .config import Problem

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}"
PERMISSION_LETTERS = "elradfmwMT"
DEFAULT_PERMISSIONS = "elr"
USER_KEYS = ("password", "root", "permissions", "tls", "max_sessions", "download_rate",
             "upload_rate", "umask")
TLS_REQUIRE = ("none", "login", "all")  # same values as [tls] require


@dataclass(frozen=True)
class User:
    name: str
    password: str
    root: str
    permissions: str
    tls_require: str | None = None  # overrides [tls] require for this user
    max_sessions: int | None = None  # overrides [server] max_sessions_per_user
    download_rate: int = 0  # bytes/s, 0 = unlimited
    upload_rate: int = 0
    umask: int | None = None  # overrides [uploads] umask


class UsersError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def check_permissions(letters: str) -> str | None:
    """Why `letters` is not a valid permission string, or None."""
    bad = sorted(set(letters) - set(PERMISSION_LETTERS))
    if bad:
        return f"unknown permission letters {''.join(bad)!r}; allowed: {PERMISSION_LETTERS}"
    return None


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsersError([Problem(path, "", "users file not found; create it with "
                                  "`ftpd passwd -f PATH NAME`")]) from None
    except PermissionError:
        raise UsersError([Problem(path, "", "permission denied reading the users file")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsersError([Problem(path, "", f"not valid TOML: {err}")]) from None
    return data


def parse(path: str, data: dict[str, Any], check_roots: bool = True) -> dict[str, User]:
    """Validate users-file data; raise UsersError listing every problem."""
    from .auth import hash_problem  # auth depends on users' types, not the reverse

    problems: list[Problem] = []
    extra = sorted(set(data) - {"users"})
    if extra:
        problems.append(Problem(path, extra[0], "unknown top-level key; users are [users.NAME]"))
    table = data.get("users", {})
    if not isinstance(table, dict):
        problems.append(Problem(path, "users", "must be tables [users.NAME]"))
        table = {}
    users: dict[str, User] = {}
    for name, entry in table.items():
        key = f"users.{name}"
        if not valid_name(name):
            problems.append(Problem(path, key, f"invalid user name; allowed: {NAME_PATTERN}"))
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(path, key, "must be a table with password, root, permissions"))
            continue
        for unknown in sorted(set(entry) - set(USER_KEYS)):
            problems.append(Problem(path, f"{key}.{unknown}",
                                    f"unknown key; allowed: {', '.join(USER_KEYS)}"))
        password = entry.get("password")
        root = entry.get("root")
        permissions = entry.get("permissions", DEFAULT_PERMISSIONS)
        why = hash_problem(password) if isinstance(password, str) else "missing or not a string"
        if why:
            problems.append(Problem(path, f"{key}.password", why + "; set it with `ftpd passwd`"))
        if not isinstance(root, str) or not os.path.isabs(root):
            problems.append(Problem(path, f"{key}.root", "missing or not an absolute path"))
        elif check_roots and not os.path.isdir(root):
            problems.append(Problem(path, f"{key}.root", f"{root} is not an existing directory"))
        elif check_roots and not os.access(root, os.R_OK | os.X_OK):
            problems.append(Problem(path, f"{key}.root", f"{root} is not readable"))
        if not isinstance(permissions, str):
            problems.append(Problem(path, f"{key}.permissions", "must be a string of letters"))
        elif why_perm := check_permissions(permissions):
            problems.append(Problem(path, f"{key}.permissions", why_perm))
        tls_require = _tls_require(path, key, entry.get("tls"), problems)
        limits = {k: _count(path, f"{key}.{k}", entry.get(k), problems)
                  for k in ("max_sessions", "download_rate", "upload_rate")}
        umask = _umask(path, f"{key}.umask", entry.get("umask"), problems)
        if not any(p.key.startswith(key) for p in problems):
            users[name] = User(name, str(password), os.path.normpath(str(root)), str(permissions),
                               tls_require, limits["max_sessions"], limits["download_rate"] or 0,
                               limits["upload_rate"] or 0, umask)
    if problems:
        raise UsersError(problems)
    return users


def _tls_require(path: str, key: str, value: Any, problems: list[Problem]) -> str | None:
    """The user's `tls = { require = "..." }` override, or None when absent."""
    if value is None:
        return None
    allowed = ", ".join(f'"{v}"' for v in TLS_REQUIRE)
    if not isinstance(value, dict):
        problems.append(Problem(path, f"{key}.tls", 'must be a table, e.g. '
                                'tls = { require = "none" }'))
        return None
    for unknown in sorted(set(value) - {"require"}):
        problems.append(Problem(path, f"{key}.tls.{unknown}", "unknown key; allowed: require"))
    require = value.get("require")
    if not isinstance(require, str) or require not in TLS_REQUIRE:
        problems.append(Problem(path, f"{key}.tls.require", f"got {require!r}, expected one "
                                f"of {allowed}"))
        return None
    return require


def _count(path: str, key: str, value: Any, problems: list[Problem]) -> int | None:
    """A non-negative integer override (sessions, bytes/s), or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(Problem(path, key, f"got {value!r}, expected an integer >= 0"))
        return None
    return int(value)


def parse_umask(value: Any) -> int:
    """An octal umask string such as "022"; raises ValueError."""
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f'got {value!r}, expected an octal string such as "022"')
    return int(value, 8)


def _umask(path: str, key: str, value: Any, problems: list[Problem]) -> int | None:
    if value is None:
        return None
    try:
        return parse_umask(value)
    except ValueError as err:
        problems.append(Problem(path, key, str(err)))
        return None


def load(path: str, check_roots: bool = True) -> dict[str, User]:
    """Read and validate the users file at `path`."""
    return parse(path, _read(path), check_roots)


def _render(users: dict[str, dict[str, Any]]) -> str:
    lines = ["# ftpd virtual users. Manage with `ftpd passwd -f FILE NAME`.", ""]
    for name in sorted(users):
        bare = re.fullmatch(r"[A-Za-z0-9_-]+", name)
        lines.append(f"[users.{name if bare else json.dumps(name)}]")
        for key, value in users[name].items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    # JSON strings are valid TOML strings; tables become TOML inline tables.
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def upsert(path: str, name: str, password_hash: str | None, root: str | None,
           permissions: str | None) -> None:
    """Create or update one user, rewriting the file atomically (mode 0640)."""
    data = _read(path) if os.path.exists(path) else {}
    table: dict[str, dict[str, Any]] = dict(data.get("users", {}))
    entry = dict(table.get(name, {}))
    if password_hash is not None:
        entry["password"] = password_hash
    if root is not None:
        entry["root"] = os.path.abspath(root)
    if permissions is not None:
        entry["permissions"] = permissions
    entry.setdefault("permissions", DEFAULT_PERMISSIONS)
    table[name] = entry
    parse(path, {"users": table}, check_roots=False)  # never write a file we could not read
    directory = os.path.dirname(os.path.abspath(path))
    import tempfile  # only `ftpd passwd` writes the file: keep it out of the daemon

    fd, tmp = tempfile.mkstemp(prefix=".users.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_render(table))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        if os.path.exists(path):
            st = os.stat(path)
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
