"""System accounts: PAM authentication, the deny list, and their authorizer.

`[users] system = true` lets the accounts of this host log in. Passwords and
account state (locked, expired) are checked by PAM, service `ftpd` by
default (`etc/pam.d/ftpd`), so whatever the admin's PAM stack does (pam_unix,
LDAP, SSSD, pam_faillock) applies. Python >= 3.13 has no `crypt`/`spwd`
and pyftpdlib's UnixAuthorizer is only a seteuid() dance, so libpam is
called directly through ctypes: pam_start, pam_authenticate, pam_acct_mgmt,
pam_end, and a conversation function answering the password prompt.

PAM calls block (an LDAP round trip, and pam_unix asks for a ~2 s delay
after a failure), so `SystemAuthorizer.verify` runs in the offload threads
like every password check. The failure delay is not slept in the thread:
an application delay hook (PAM_FAIL_DELAY) swallows it, and the session's
own non-blocking delay (pyftpdlib's auth_failed_timeout) is applied to
every failed login instead, so a storm of wrong passwords cannot occupy the
thread pool for seconds each.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ftpd.pam")

# <security/_pam_types.h>
PAM_SUCCESS = 0
PAM_PERM_DENIED = 6
PAM_AUTH_ERR = 7
PAM_USER_UNKNOWN = 10
PAM_NEW_AUTHTOK_REQD = 12
PAM_ACCT_EXPIRED = 13
PAM_CONV_ERR = 19
PAM_BUF_ERR = 5
PAM_SILENT = 0x8000
PAM_DISALLOW_NULL_AUTHTOK = 0x0001
# items
PAM_USER = 2
PAM_TTY = 3
PAM_RHOST = 4
PAM_FAIL_DELAY = 10
# message styles
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4

LIBPAM = "libpam.so.0"
LIBC = "libc.so.6"


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class PamResponse(ctypes.Structure):
    # resp is malloc'd by us and freed by libpam: keep it a raw pointer
    # (c_char_p would turn it into a Python bytes copy).
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


ConvFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int,
                            ctypes.POINTER(ctypes.POINTER(PamMessage)),
                            ctypes.POINTER(ctypes.POINTER(PamResponse)), ctypes.c_void_p)
DelayFunc = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", ConvFunc), ("appdata_ptr", ctypes.c_void_p)]


class PamUnavailable(Exception):
    """libpam cannot be loaded."""


@dataclass(frozen=True)
class PamResult:
    ok: bool
    stage: str  # "start", "auth", "account" or "user" (where it stopped)
    code: int
    reason: str  # pam_strerror() text, for the log

    def __str__(self) -> str:
        return "ok" if self.ok else f"{self.stage}: {self.reason} (PAM code {self.code})"


class Pam:
    """A minimal libpam binding. Thread-safe: every check has its own handle."""

    def __init__(self, service: str, library: str = LIBPAM) -> None:
        self.service = service
        try:
            lib = ctypes.CDLL(library)
            libc = ctypes.CDLL(LIBC)
        except OSError as err:
            raise PamUnavailable(f"cannot load {library}: {err} (install libpam0g)") from None
        handle_p = ctypes.c_void_p
        lib.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(PamConv),
                                  ctypes.POINTER(handle_p)]
        lib.pam_start.restype = ctypes.c_int
        for name in ("pam_authenticate", "pam_acct_mgmt", "pam_end"):
            getattr(lib, name).argtypes = [handle_p, ctypes.c_int]
            getattr(lib, name).restype = ctypes.c_int
        lib.pam_set_item.argtypes = [handle_p, ctypes.c_int, ctypes.c_void_p]
        lib.pam_set_item.restype = ctypes.c_int
        lib.pam_get_item.argtypes = [handle_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
        lib.pam_get_item.restype = ctypes.c_int
        lib.pam_strerror.argtypes = [handle_p, ctypes.c_int]
        lib.pam_strerror.restype = ctypes.c_char_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.calloc.restype = ctypes.c_void_p
        libc.strdup.argtypes = [ctypes.c_char_p]
        libc.strdup.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
        self._lib = lib
        self._libc = libc

    def check(self, user: str, password: str, rhost: str | None = None) -> PamResult:
        """pam_authenticate then pam_acct_mgmt for `user`. Blocking: call in a thread."""
        lib = self._lib
        secret = password.encode("utf-8", "surrogateescape")
        if b"\0" in secret:
            return PamResult(False, "auth", PAM_AUTH_ERR, "NUL byte in the password")
        notes: list[str] = []  # PAM_ERROR_MSG / PAM_TEXT_INFO texts, for the log
        # Both callbacks stay referenced by these locals until pam_end():
        # libpam may call them at any point of the transaction.
        conv = ConvFunc(self._conversation(secret, notes))
        no_sleep = DelayFunc(_skip_fail_delay)
        conv_struct = PamConv(conv, None)
        handle = ctypes.c_void_p()
        code = lib.pam_start(self.service.encode(), user.encode("utf-8", "surrogateescape"),
                             ctypes.byref(conv_struct), ctypes.byref(handle))
        if code != PAM_SUCCESS or not handle:
            return PamResult(False, "start", code, self._strerror(None, code))
        last = code
        try:
            lib.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(no_sleep, ctypes.c_void_p))
            lib.pam_set_item(handle, PAM_TTY, ctypes.c_char_p(b"ftp"))
            if rhost:
                lib.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode()))
            last = lib.pam_authenticate(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)
            if last != PAM_SUCCESS:
                return self._result(handle, "auth", last, notes)
            last = lib.pam_acct_mgmt(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)
            if last != PAM_SUCCESS:
                # PAM_NEW_AUTHTOK_REQD too: a password change is impossible over FTP.
                return self._result(handle, "account", last, notes)
            # A module may rewrite PAM_USER (mapping); we would then jail the
            # wrong account, so only an unchanged name is accepted.
            item = ctypes.c_void_p()
            if lib.pam_get_item(handle, PAM_USER, ctypes.byref(item)) != PAM_SUCCESS or \
                    not item.value or ctypes.string_at(item.value) != user.encode(
                        "utf-8", "surrogateescape"):
                return PamResult(False, "user", PAM_PERM_DENIED, "PAM changed the user name")
            return PamResult(True, "account", PAM_SUCCESS, "success")
        finally:
            lib.pam_end(handle, last)

    def _result(self, handle: ctypes.c_void_p, stage: str, code: int,
                notes: list[str]) -> PamResult:
        reason = self._strerror(handle, code)
        if notes:
            reason += " (" + "; ".join(notes)[:200] + ")"
        return PamResult(False, stage, code, reason)

    def _strerror(self, handle: ctypes.c_void_p | None, code: int) -> str:
        text = self._lib.pam_strerror(handle, code)
        return text.decode(errors="replace") if text else f"PAM error {code}"

    def _conversation(self, secret: bytes, notes: list[str]) -> Callable[..., int]:
        libc = self._libc

        def converse(count: int, messages: Any, answer: Any, _appdata: Any) -> int:
            # Must never raise into C: any surprise is a conversation error.
            try:
                if count <= 0:
                    return PAM_CONV_ERR
                block = libc.calloc(count, ctypes.sizeof(PamResponse))
                if not block:
                    return PAM_BUF_ERR
                responses = ctypes.cast(block, ctypes.POINTER(PamResponse))
                for i in range(count):
                    message = messages[i].contents
                    if message.msg_style == PAM_PROMPT_ECHO_OFF:
                        copy = libc.strdup(secret)
                        if not copy:
                            _free_responses(libc, responses, i, block)
                            return PAM_BUF_ERR
                        responses[i].resp = copy
                    elif message.msg_style in (PAM_ERROR_MSG, PAM_TEXT_INFO):
                        notes.append((message.msg or b"").decode(errors="replace").strip())
                    else:
                        # An echoed prompt (a one-time code, a user name):
                        # we have nothing the client typed for it.
                        _free_responses(libc, responses, i, block)
                        return PAM_CONV_ERR
                answer[0] = responses
                return PAM_SUCCESS
            except Exception:
                return PAM_CONV_ERR

        return converse


def _free_responses(libc: Any, responses: Any, filled: int, block: int) -> None:
    for j in range(filled):
        if responses[j].resp:
            libc.free(responses[j].resp)
    libc.free(block)


def _skip_fail_delay(_status: int, _usec: int, _appdata: Any) -> None:
    """PAM_FAIL_DELAY hook: the session delays the 530 without a thread (see above)."""


# --- the deny list (/etc/ftpusers)

def parse_deny_list(text: str) -> frozenset[str]:
    """Account names in an ftpusers file: one a line, `#` starts a comment."""
    names = set()
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return frozenset(names)


class DenyList:
    """`[users] deny_file`, re-read when it changes; root is always denied.

    A missing file denies nobody else; an unreadable one denies every system
    account (fail closed) until it can be read again.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._names: frozenset[str] | None = frozenset()

    def _load(self) -> frozenset[str] | None:
        if not self.path:
            return frozenset()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return frozenset()
        except OSError as err:
            log.error("deny file %s unreadable (%s): refusing every system account",
                      self.path, err.strerror)
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp == self._stamp:
                return self._names
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    names: frozenset[str] | None = parse_deny_list(f.read())
            except OSError as err:
                log.error("deny file %s unreadable (%s): refusing every system account",
                          self.path, err.strerror)
                names = None
            self._stamp, self._names = (stamp if names is not None else None), names
            return names

    def refusal(self, name: str, uid: int | None) -> str | None:
        """Why `name` may not log in, or None."""
        if name == "root" or uid == 0:
            return "root may never log in"
        names = self._load()
        if names is None:
            return f"the deny file {self.path} cannot be read"
        if name in names:
            return f"listed in {self.path}"
        return None


# --- the authorizer

@dataclass(frozen=True)
class SystemAccount:
    """What a system account's session process becomes (read before any chroot)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    group_names: dict[int, str] = field(default_factory=dict)  # for LIST in the jail


def lookup_account(name: str) -> SystemAccount | None:
    """The account from the name service (passwd, group), or None if unknown.

    Blocking (LDAP, SSSD): called in the offload threads, never on the loop.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = tuple(dict.fromkeys(os.getgrouplist(name, entry.pw_gid)))
    names = {}
    for gid in groups:
        try:
            names[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            pass
    return SystemAccount(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, names)


class SystemAuthorizer:
    """VirtualAuthorizer's interface over system accounts and the users file.

    A name in the users file (or an anonymous name) is a virtual user and is
    left to the virtual authorizer, which also answers everything not about
    system accounts; any other name is a system account checked by PAM.
    """

    def __init__(self, virtual: Any, pam: Pam, deny: DenyList, permissions: str,
                 lookup: Callable[[str], SystemAccount | None] = lookup_account) -> None:
        self.virtual = virtual
        self.pam = pam
        self.deny = deny
        self.permissions = permissions
        self._lookup = lookup
        self._accounts: dict[str, SystemAccount] = {}  # filled by verify(), read on the loop

    @classmethod
    def from_config(cls, config: Any, virtual: Any) -> SystemAuthorizer:
        users = config.users
        return cls(virtual, Pam(users.pam_service), DenyList(users.deny_file),
                   users.system_permissions)

    def __getattr__(self, name: str) -> Any:
        # Everything else (refresh, is_anonymous, user, anonymous, cache...) is
        # the virtual authorizer's.
        return getattr(self.virtual, name)

    def is_virtual(self, name: str) -> bool:
        return bool(self.virtual.has_user(name))

    def system_account(self, name: str) -> SystemAccount | None:
        """The account verified for `name`, None for virtual users."""
        return None if self.is_virtual(name) else self._accounts.get(name)

    def verify(self, name: str, password: str) -> bool:
        """Slow: call off the event loop."""
        if self.is_virtual(name):
            return bool(self.virtual.verify(name, password))
        refusal = self.check(name, password)
        if refusal:
            log.info("system login of %r refused: %s", name, refusal)
            return False
        return True

    def check(self, name: str, password: str) -> str | None:
        """Why the system login of `name` fails, or None (the account is then cached)."""
        before = self._lookup(name)
        refusal = self.deny.refusal(name, before.uid if before else None)
        if refusal:
            return refusal
        result = self.pam.check(name, password)
        if not result.ok:
            return str(result)
        # Looked up again after PAM: modules may have created or changed it.
        account = self._lookup(name)
        if account is None:
            return "PAM accepted the login but the account is unknown to the name service"
        refusal = self.deny.refusal(name, account.uid)
        if refusal:
            return refusal
        if not os.path.isabs(account.home) or not os.path.isdir(account.home):
            return f"home directory {account.home!r} does not exist"
        self._accounts[name] = account
        return None

    # --- the interface pyftpdlib's FTPHandler calls

    def validate_authentication(self, username: str, password: str, handler: object) -> None:
        from pyftpdlib.authorizers import AuthenticationFailed

        if not self.verify(username, password):
            raise AuthenticationFailed("Authentication failed.")

    def has_user(self, username: str) -> bool:
        return self.is_virtual(username) or username in self._accounts

    def get_home_dir(self, username: str) -> str:
        if self.is_virtual(username):
            return str(self.virtual.get_home_dir(username))
        return self._accounts[username].home

    def get_perms(self, username: str) -> str:
        if self.is_virtual(username):
            return str(self.virtual.get_perms(username))
        return self.permissions

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        if self.is_virtual(username):
            return bool(self.virtual.has_perm(username, perm, path))
        return perm in self.permissions
