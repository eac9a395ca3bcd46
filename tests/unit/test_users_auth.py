"""Users file, password hashing and the authorizer."""

from __future__ import annotations

import os
import time

import pytest

from ftpd import auth, users


def test_hash_and_verify():
    stored = auth.hash_password("correct horse", log_n=10)
    assert stored.startswith("$scrypt$ln=10,r=8,p=1$")
    assert auth.verify_password("correct horse", stored)
    assert not auth.verify_password("correct hors", stored)
    assert auth.hash_password("x", log_n=10) != auth.hash_password("x", log_n=10)  # salted
    assert auth.hash_problem(stored) is None
    assert auth.hash_problem("plaintext") is not None
    assert auth.hash_problem(auth._DUMMY_HASH) is None  # same cost for unknown users


def test_default_cost_is_at_least_sha512_crypt():
    stored = auth.hash_password("x")
    assert f"ln={auth.DEFAULT_LOG_N}," in stored and auth.DEFAULT_LOG_N >= 15


def test_upsert_creates_updates_and_keeps_other_users(tmp_path):
    path = str(tmp_path / "users.toml")
    users.upsert(path, "alice", auth.hash_password("a", 10), str(tmp_path), "elr")
    users.upsert(path, "bob", auth.hash_password("b", 10), str(tmp_path), None)
    users.upsert(path, "alice", None, None, "elradfmw")
    table = users.load(path)
    assert table["alice"].permissions == "elradfmw"
    assert auth.verify_password("a", table["alice"].password)
    assert table["bob"].permissions == users.DEFAULT_PERMISSIONS
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_users_file_problems_name_the_key(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text('[users.alice]\npassword = "plain"\nroot = "/does/not/exist"\n'
                    'permissions = "elrX"\nshell = "/bin/sh"\n')
    with pytest.raises(users.UsersError) as err:
        users.load(str(path))
    text = str(err.value)
    for key in ("users.alice.password", "users.alice.root", "users.alice.permissions",
                "users.alice.shell"):
        assert key in text


def test_authorizer_picks_up_changes_and_keeps_last_good_table(tmp_path):
    path = str(tmp_path / "users.toml")
    users.upsert(path, "alice", auth.hash_password("one", 10), str(tmp_path), "elr")
    authorizer = auth.VirtualAuthorizer(path, users.load(path))
    assert authorizer.verify("alice", "one") and not authorizer.verify("alice", "two")
    time.sleep(0.01)
    users.upsert(path, "alice", auth.hash_password("two", 10), None, None)
    assert authorizer.verify("alice", "two")
    with open(path, "a") as f:
        f.write("garbage = [\n")
    assert authorizer.verify("alice", "two")  # broken file: previous users stay
    assert not authorizer.verify("mallory", "two")


def test_verification_cache_coalesces_and_remembers_only_successes():
    import threading

    cache = auth.VerificationCache(ttl=60)
    calls = []
    gate = threading.Event()

    def slow_ok() -> bool:
        calls.append(1)
        gate.wait(5)
        return True

    key = cache.key("alice", "$hash", "pw")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(cache.verify(key, slow_ok)))
               for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == [True] * 20 and len(calls) == 1  # one KDF for 20 logins
    assert cache.verify(key, lambda: False) is True  # remembered
    bad = cache.key("alice", "$hash", "wrong")
    assert cache.verify(bad, lambda: False) is False
    assert cache.verify(bad, lambda: calls.append(2) or False) is False
    assert calls[-1] == 2  # failures are computed every time
    assert cache.key("alice", "$other-hash", "pw") != key  # a new password hash never matches
    cache.clear()
    assert cache.verify(key, lambda: False) is False


def test_authorizer_cache_is_dropped_when_the_users_file_changes(tmp_path):
    path = str(tmp_path / "users.toml")
    users.upsert(path, "alice", auth.hash_password("one", 10), str(tmp_path), "elr")
    authorizer = auth.VirtualAuthorizer(path, users.load(path), cache_seconds=60)
    assert authorizer.verify("alice", "one")
    time.sleep(0.01)
    users.upsert(path, "alice", auth.hash_password("two", 10), None, None)
    assert not authorizer.verify("alice", "one")
    assert authorizer.verify("alice", "two")
