"""The fast data paths: uploads spliced into the file, TLS downloads written on
while the socket takes them. Each must move every byte, release what it holds,
report a full disk with a reply, and leave throttling in charge when set."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import subprocess
import time

import psutil
import pytest

from tests.conftest import wait_for
from tests.integration.test_user_policy import set_user_keys
from tests.integration.tlskit import ftps, make_ca, tls_section


def pipes_of(proc: psutil.Process) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{proc.pid}/fd"):
        try:
            count += os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


def test_upload_goes_through_a_pipe_that_is_released(make_daemon):
    daemon = make_daemon(workers=1)
    worker = daemon.workers()[0]
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    idle_pipes = pipes_of(worker)
    payload = os.urandom(6_000_000)

    conn = client.transfercmd("STOR big.bin")
    conn.sendall(payload[:1_000_000])
    # The upload runs: the worker holds one splice pipe (two descriptors) for it.
    wait_for(lambda: pipes_of(worker) == idle_pipes + 2, what="the upload's splice pipe")
    conn.sendall(payload[1_000_000:])
    conn.close()
    client.voidresp()
    assert (daemon.root / "big.bin").read_bytes() == payload
    wait_for(lambda: pipes_of(worker) == idle_pipes, what="the pipe released")

    # An upload aborted halfway releases its pipe too, and nothing is lost
    # for the next one.
    conn = client.transfercmd("STOR cut.bin")
    conn.sendall(payload[:2_000_000])
    wait_for(lambda: pipes_of(worker) == idle_pipes + 2, what="the second upload's pipe")
    # ABOR while the data connection is still open (closing it first would
    # mean "end of file" and race the ABOR): 426 for the transfer, then 226.
    client.putcmd("ABOR")
    replies = [client.getmultiline()]
    conn.close()
    if replies[0].startswith("426"):
        replies.append(client.getmultiline())
    assert replies[-1].startswith(("225", "226")), replies
    daemon.wait_log(r"event=upload .*path=/cut.bin .*completed=false")
    wait_for(lambda: pipes_of(worker) == idle_pipes, what="the aborted upload's pipe released")
    client.storbinary("STOR after.bin", io.BytesIO(payload))
    assert (daemon.root / "after.bin").read_bytes() == payload

    # APPE opens the file for appending, which splice() refuses: the buffered
    # path takes over and the bytes land after the existing ones.
    client.storbinary("APPE after.bin", io.BytesIO(b"tail"))
    assert (daemon.root / "after.bin").read_bytes() == payload + b"tail"
    client.quit()


@pytest.fixture
def small_disk(make_daemon, tmp_path):
    """make(**sections) -> a daemon whose root holds a 1 MiB tmpfs at /small."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def make(**sections):
        daemon = make_daemon(**sections)
        small = daemon.root / "small"
        small.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ftpd-test", str(small)],
                       check=True)
        mounted.append(small)
        return daemon

    yield make
    for small in mounted:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_full_disk_gets_a_reply_and_the_session_goes_on(small_disk, tmp_path, secure):
    if secure:
        ca = make_ca(tmp_path / "ca")
        daemon = small_disk(tls=tls_section(ca))
        # TLS 1.2: a TLS 1.3 client that closes without reading the session
        # tickets resets the connection, which is reported as such (426).
        client, other = ftps(daemon, ca, version="1.2"), ftps(daemon, ca)
    else:
        daemon = small_disk()
        client, other = daemon.ftp(), daemon.ftp()
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR small/too-big.bin")
    try:
        conn.sendall(os.urandom(3_000_000))
        conn.close()
    except OSError:
        pass  # the server closed the data connection when the disk filled
    with pytest.raises(ftplib.Error) as refused:
        client.voidresp()
    assert str(refused.value) == "426 No space left on device; transfer aborted."
    # The session and the other one carry on; the worker did not lose anything.
    assert client.voidcmd("NOOP").startswith("200")
    client.storbinary("STOR fits.bin", io.BytesIO(b"x" * 100_000))
    assert (daemon.root / "fits.bin").stat().st_size == 100_000
    other.storbinary("STOR other.bin", io.BytesIO(b"y" * 1000))
    assert (daemon.root / "other.bin").read_bytes() == b"y" * 1000
    client.quit()
    other.quit()
    daemon.wait_log(r"event=upload .*path=/small/too-big.bin .*completed=false")


def test_tls_download_of_a_large_file_is_intact(make_daemon, tmp_path):
    ca = make_ca(tmp_path / "ca")
    daemon = make_daemon(tls=tls_section(ca))
    payload = os.urandom(24 * 1024 * 1024)
    (daemon.root / "big.bin").write_bytes(payload)
    client = ftps(daemon, ca)
    digest = hashlib.sha256()
    client.retrbinary("RETR big.bin", digest.update)
    # A second transfer on the same session: the channel state is clean.
    small = io.BytesIO()
    client.retrbinary("RETR big.bin", small.write, rest=len(payload) - 5000)
    client.quit()
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert small.getvalue() == payload[-5000:]
    daemon.wait_log(rf"event=download .*bytes={len(payload)} .*completed=true")


def test_throttled_tls_download_and_upload_keep_their_rate(make_daemon, tmp_path):
    ca = make_ca(tmp_path / "ca")
    daemon = make_daemon(start=False, tls=tls_section(ca))
    set_user_keys(daemon.users_file, "alice", download_rate=200_000, upload_rate=200_000)
    daemon.start()
    payload = os.urandom(600_000)
    (daemon.root / "f.bin").write_bytes(payload)
    client = ftps(daemon, ca)
    started = time.monotonic()
    out = io.BytesIO()
    client.retrbinary("RETR f.bin", out.write)
    assert time.monotonic() - started >= 1.5  # 600 kB at 200 kB/s
    assert out.getvalue() == payload
    started = time.monotonic()
    client.storbinary("STOR g.bin", io.BytesIO(payload))
    assert time.monotonic() - started >= 1.5
    assert (daemon.root / "g.bin").read_bytes() == payload
    client.quit()
