"""System accounts without a daemon: the deny list, the authorizer's decisions
(with a fake PAM and a fake name service) and the PAM conversation function."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from ftpd.pam import (
    PAM_CONV_ERR,
    PAM_ERROR_MSG,
    PAM_PROMPT_ECHO_OFF,
    PAM_PROMPT_ECHO_ON,
    PAM_SUCCESS,
    PAM_TEXT_INFO,
    DenyList,
    Pam,
    PamMessage,
    PamResponse,
    PamResult,
    SystemAccount,
    SystemAuthorizer,
    parse_deny_list,
)


def test_parse_deny_list():
    text = "# ftpusers\nroot\n  daemon  \n\nbin # system\n#games\n"
    assert parse_deny_list(text) == {"root", "daemon", "bin"}
    assert parse_deny_list("") == frozenset()


def test_deny_list_file(tmp_path: Path):
    path = tmp_path / "ftpusers"
    deny = DenyList(str(path))
    assert deny.refusal("bob", 1000) is None  # a missing file denies nobody else
    assert deny.refusal("root", 0) == "root may never log in"
    assert deny.refusal("toor", 0) == "root may never log in"  # any uid 0
    path.write_text("bob\n")
    assert deny.refusal("bob", 1000) == f"listed in {path}"
    path.write_text("carol\n# bob\n")  # changed: read again
    assert deny.refusal("bob", 1000) is None
    assert deny.refusal("carol", None) == f"listed in {path}"
    assert DenyList("").refusal("bob", 1000) is None
    assert DenyList("").refusal("root", None) is not None


def test_unreadable_deny_list_refuses_everybody(tmp_path: Path):
    deny = DenyList(str(tmp_path))  # a directory: stat works, reading fails
    assert "cannot be read" in (deny.refusal("bob", 1000) or "")


class FakePam:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls: list[tuple[str, str]] = []

    def check(self, user: str, password: str, rhost: str | None = None) -> PamResult:
        self.calls.append((user, password))
        if self.ok:
            return PamResult(True, "account", PAM_SUCCESS, "success")
        return PamResult(False, "account", 13, "User account has expired")


class FakeVirtual:
    """The part of VirtualAuthorizer the system authorizer uses."""

    def has_user(self, name: str) -> bool:
        return name == "alice"

    def verify(self, name: str, password: str) -> bool:
        return password == "alice-pw"

    def get_home_dir(self, name: str) -> str:
        return "/srv/alice"

    def get_perms(self, name: str) -> str:
        return "elr"

    def has_perm(self, name: str, perm: str, path: str | None = None) -> bool:
        return perm in "elr"

    def is_anonymous(self, name: str) -> bool:
        return False


def authorizer(tmp_path: Path, pam: FakePam, deny: str = "", home: str | None = None
               ) -> SystemAuthorizer:
    homes = {"bob": home or str(tmp_path), "toor": str(tmp_path)}
    uids = {"bob": 1000, "toor": 0}

    def lookup(name: str) -> SystemAccount | None:
        if name not in homes:
            return None
        return SystemAccount(name, uids[name], 100, (100, 27), homes[name])

    return SystemAuthorizer(FakeVirtual(), pam, DenyList(deny), "elrw",  # type: ignore[arg-type]
                            lookup=lookup)


def test_virtual_users_are_left_to_the_virtual_authorizer(tmp_path: Path):
    pam = FakePam()
    auth = authorizer(tmp_path, pam)
    assert auth.verify("alice", "alice-pw") and not auth.verify("alice", "x")
    assert pam.calls == []
    assert auth.get_home_dir("alice") == "/srv/alice" and auth.get_perms("alice") == "elr"
    assert auth.system_account("alice") is None
    assert auth.is_anonymous("alice") is False  # anything else is delegated


def test_system_account_verified_by_pam_and_remembered(tmp_path: Path):
    pam = FakePam()
    auth = authorizer(tmp_path, pam)
    assert not auth.has_user("bob")
    assert auth.verify("bob", "pw")
    assert pam.calls == [("bob", "pw")]
    account = auth.system_account("bob")
    assert account is not None and account.uid == 1000 and account.groups == (100, 27)
    assert auth.get_home_dir("bob") == str(tmp_path)
    assert auth.has_user("bob") and auth.get_perms("bob") == "elrw"
    assert auth.has_perm("bob", "w", "/x") and not auth.has_perm("bob", "d")


def test_refusals_before_and_after_pam(tmp_path: Path):
    pam = FakePam()
    deny = tmp_path / "ftpusers"
    deny.write_text("bob\n")
    auth = authorizer(tmp_path, pam, deny=str(deny))
    assert auth.check("bob", "pw") == f"listed in {deny}"
    assert auth.check("root", "pw") == "root may never log in"
    assert auth.check("toor", "pw") == "root may never log in"  # uid 0 under another name
    assert pam.calls == []  # PAM is not even asked
    assert not auth.verify("bob", "pw") and auth.system_account("bob") is None
    refusing = authorizer(tmp_path, FakePam(ok=False))
    assert refusing.check("bob", "pw") == "account: User account has expired (PAM code 13)"
    assert refusing.system_account("bob") is None
    homeless = authorizer(tmp_path, FakePam(), home=str(tmp_path / "gone"))
    assert "does not exist" in (homeless.check("bob", "pw") or "")
    assert "unknown to the name service" in (auth.check("nobody-here", "pw") or "")


# --- the conversation function, called as libpam would

def converse(messages: list[tuple[int, bytes]], secret: bytes = b"s3cret"
             ) -> tuple[int, list[bytes | None], list[str]]:
    pam = Pam("ftpd")
    notes: list[str] = []
    function = pam._conversation(secret, notes)
    structs = [PamMessage(style, text) for style, text in messages]
    array = (ctypes.POINTER(PamMessage) * len(structs))(*[ctypes.pointer(m) for m in structs])
    answer = ctypes.POINTER(PamResponse)()
    code = function(len(structs), array, ctypes.pointer(answer), None)
    replies: list[bytes | None] = []
    if code == PAM_SUCCESS:
        for i in range(len(structs)):
            pointer = answer[i].resp
            replies.append(ctypes.string_at(pointer) if pointer else None)
            if pointer:
                pam._libc.free(pointer)  # libpam's job in real life
        pam._libc.free(ctypes.cast(answer, ctypes.c_void_p))
    return code, replies, notes


def test_conversation_answers_password_prompts():
    code, replies, notes = converse([(PAM_TEXT_INFO, b"hello"),
                                     (PAM_PROMPT_ECHO_OFF, b"Password: "),
                                     (PAM_ERROR_MSG, b"careful")])
    assert code == PAM_SUCCESS
    assert replies == [None, b"s3cret", None]
    assert notes == ["hello", "careful"]


def test_conversation_refuses_prompts_it_cannot_answer():
    assert converse([(PAM_PROMPT_ECHO_OFF, b"Password: "),
                     (PAM_PROMPT_ECHO_ON, b"One-time code: ")])[0] == PAM_CONV_ERR
    assert converse([])[0] == PAM_CONV_ERR


def test_nul_in_password_never_reaches_pam():
    result = Pam("ftpd").check("bob", "a\0b")
    assert not result.ok and "NUL" in result.reason


def test_pam_result_text():
    assert str(PamResult(True, "account", 0, "success")) == "ok"
    assert str(PamResult(False, "auth", 7, "Authentication failure")) == \
        "auth: Authentication failure (PAM code 7)"


@pytest.mark.parametrize("library", ["libpam-does-not-exist.so"])
def test_missing_libpam_is_reported(library: str):
    from ftpd.pam import PamUnavailable

    with pytest.raises(PamUnavailable, match="libpam0g"):
        Pam("ftpd", library=library)
