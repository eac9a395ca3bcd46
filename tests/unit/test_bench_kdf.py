"""bench/kdf.py times the real checks: its scrypt is ftpd's, its crypt is pam_unix's."""

from __future__ import annotations

import subprocess

import pytest

from bench import kdf
from ftpd import auth, users


def test_sha512_crypt_is_what_openssl_passwd_6_makes() -> None:
    made = subprocess.run(["openssl", "passwd", "-6", "-salt", "abcdefgh", "s3cret"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert kdf.sha512_crypt("s3cret", "abcdefgh") == made


def test_scrypt_check_is_ftpds_verification() -> None:
    stored = auth.hash_password("right", 10)
    assert kdf.scrypt_check("right", stored) and auth.verify_password("right", stored)
    assert not kdf.scrypt_check("wrong", stored)
    with pytest.raises(ValueError):
        kdf.scrypt_check("right", "$6$abc$def")


def test_compare_reads_the_users_file_and_checks_the_password(tmp_path) -> None:
    path = tmp_path / "users.toml"
    users.upsert(str(path), "bench", auth.hash_password("pw", 10), str(tmp_path), "elr")
    cost = kdf.compare(path, "pw")
    assert cost["ftpd_scheme"] == "$scrypt$ln=10,r=8,p=1"
    assert cost["ftpd_ms"] > 0 and cost["sha512_crypt_ms"] > 0 and cost["ratio"] > 0
    with pytest.raises(RuntimeError, match="does not match"):
        kdf.compare(path, "not-the-password")
