"""Certificate rotation with SIGHUP (under load), a broken new certificate, `ftpd check`."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import free_port
from tests.integration.tlskit import fingerprint, ftps, make_ca, peer_fingerprint


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def install(ca, name: str, live_cert, live_key, key_of: str | None = None) -> None:
    """Replace the live files atomically, as certbot's deploy hook would."""
    cert, key = ca.directory / f"{name}.crt", ca.directory / f"{name}.key"
    if not cert.exists():
        cert, key = ca.issue(name)
    if key_of is not None:
        key = ca.directory / f"{key_of}.key"
    for source, target in ((cert, live_cert), (key, live_key)):
        tmp = target.with_suffix(".new")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)


def check(daemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftpd", "check", "-c", str(daemon.config_path)],
                          capture_output=True, text=True, timeout=60)


def test_rotation_under_load_drops_nothing(make_daemon, ca):
    live_cert, live_key = ca.directory / "live.crt", ca.directory / "live.key"
    install(ca, "old", live_cert, live_key)
    implicit = free_port()
    daemon = make_daemon(workers=2, passive_size=60, tls={
        "certificate": str(live_cert), "key": str(live_key),
        "implicit_listen": [f"127.0.0.1:{implicit}"]})
    blob = os.urandom(512 * 1024)
    digest = hashlib.sha256(blob).hexdigest()
    (daemon.root / "blob").write_bytes(blob)
    assert peer_fingerprint(daemon.port, ca) == fingerprint(ca.directory / "old.crt")

    # Sessions open across the reload: they stay on the old generation.
    held = [ftps(daemon, ca), ftps(daemon, ca, implicit=True, port=implicit)]
    stop = threading.Event()
    errors: list[str] = []
    done = [0]

    def load(implicit_mode: bool) -> None:
        while not stop.is_set():
            try:
                client = ftps(daemon, ca, implicit=implicit_mode,
                              port=implicit if implicit_mode else None)
                out = io.BytesIO()
                client.retrbinary("RETR blob", out.write)
                client.quit()
                if hashlib.sha256(out.getvalue()).hexdigest() != digest:
                    errors.append("corrupt download")
                done[0] += 1
            except Exception as err:  # any failure is a dropped or refused session
                errors.append(repr(err))

    threads = [threading.Thread(target=load, args=(i % 2 == 1,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    install(ca, "new", live_cert, live_key)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 2")
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert done[0] >= 8

    assert peer_fingerprint(daemon.port, ca) == fingerprint(ca.directory / "new.crt")
    for client in held:  # old sessions keep working, data channels included
        out = io.BytesIO()
        client.retrbinary("RETR blob", out.write)
        assert hashlib.sha256(out.getvalue()).hexdigest() == digest
        client.quit()

    # A broken renewal (the key of another certificate): the reload is refused
    # and the running generation keeps serving the last good certificate.
    install(ca, "broken", live_cert, live_key, key_of="old")
    daemon.signal(signal.SIGHUP)
    log = daemon.wait_log(r"reload failed, still serving with the previous configuration")
    assert "private key does not match the certificate" in log
    assert peer_fingerprint(daemon.port, ca) == fingerprint(ca.directory / "new.crt")
    ftps(daemon, ca, implicit=True, port=implicit).quit()
    assert check(daemon).returncode == 1

    install(ca, "fixed", live_cert, live_key)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 3")
    assert peer_fingerprint(daemon.port, ca) == fingerprint(ca.directory / "fixed.crt")


def test_check_validates_certificate_and_key(make_daemon, ca, tmp_path):
    cert, key = ca.issue("soon", days=5)
    daemon = make_daemon(start=False, tls={"certificate": str(cert), "key": str(key)})
    result = check(daemon)
    assert result.returncode == 0, result.stderr
    assert re.search(r"warning: .*tls\.certificate: the certificate for localhost "
                     r"expires on .* \(in 4 days, \d+ hours\): renew it", result.stderr), \
        result.stderr

    far_cert, far_key = ca.issue("far", days=200)
    _other_cert, other_key = ca.issue("other")
    cases = {
        "missing": ({"certificate": str(tmp_path / "nope.crt"), "key": str(far_key)},
                    "tls.certificate: .*nope.crt does not exist"),
        "mismatch": ({"certificate": str(far_cert), "key": str(other_key)},
                     "tls.certificate: the private key does not match the certificate"),
        "not pem": ({"certificate": str(daemon.config_path), "key": str(far_key)},
                    "holds no PEM certificate"),
        "no key": ({"certificate": str(far_cert)}, r"holds no private key \(tls.key is empty\)"),
        "ciphers": ({"certificate": str(far_cert), "key": str(far_key), "ciphers": "NOPE"},
                    "tls.ciphers: OpenSSL refuses the cipher list 'NOPE'"),
        "versions": ({"certificate": str(far_cert), "key": str(far_key), "min_version": "1.3",
                      "max_version": "1.2"}, "tls.max_version: 1.2 is below tls.min_version"),
        "no cert": ({"require": "login"}, 'tls.require: tls.require = "login" needs a '
                    "certificate"),
        "overlap": ({"certificate": str(far_cert), "key": str(far_key),
                     "implicit_listen": [f"127.0.0.1:{daemon.port}"]},
                    "is also in server.listen"),
    }
    for name, (tls, message) in cases.items():
        daemon.write_config(tls=tls)
        result = check(daemon)
        assert result.returncode == 1, name
        assert re.search(message, result.stderr), (name, result.stderr)

    # A key in the certificate file (key = "") and a chain with an intermediate
    # placed first are handled and explained.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(far_cert.read_bytes() + far_key.read_bytes())
    bundle.chmod(0o600)
    daemon.write_config(tls={"certificate": str(bundle)})
    result = check(daemon)
    assert result.returncode == 0, result.stderr
    wrong_order = tmp_path / "chain.pem"
    wrong_order.write_bytes(ca.path.read_bytes() + far_cert.read_bytes())
    daemon.write_config(tls={"certificate": str(wrong_order), "key": str(far_key)})
    result = check(daemon)
    assert "the key belongs to a later certificate of the chain" in result.stderr

    # And `ftpd serve` refuses to start with a bad certificate, naming the key.
    daemon.write_config(tls={"certificate": str(far_cert), "key": str(other_key)})
    daemon.expect_failure = True
    daemon.start(wait=False)
    assert daemon.proc.wait(30) == 78
    assert "private key does not match" in daemon.log()
