"""A user cannot leave their root: `..`, absolute paths, symlinks, STOU."""

from __future__ import annotations

import ftplib
import io
import os

import pytest

from tests.integration.escapes import SECRET, build_escape_tree


@pytest.fixture
def jail(make_daemon):
    daemon = make_daemon(workers=1)
    outside = build_escape_tree(daemon, daemon.root / "sub" / "ok.txt")
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    yield daemon, client, outside
    client.close()
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def refused(call, *args) -> str:
    with pytest.raises(ftplib.error_perm) as err:
        call(*args)
    assert str(err.value)[:3] in ("550", "501", "553"), err.value
    return str(err.value)


def retr(client, name):
    client.retrbinary(f"RETR {name}", io.BytesIO().write)


@pytest.mark.parametrize("name", [
    "../outside/secret.txt", "/../outside/secret.txt", "../../../../etc/passwd", "/etc/passwd",
    "link_dir/secret.txt", "link_file", "rel_up/secret.txt", "sub/../../outside/secret.txt",
])
def test_reads_outside_are_refused(jail, name):
    _, client, _ = jail
    refused(retr, client, name)


@pytest.mark.parametrize("command", ["SIZE link_file", "MDTM link_file", "MLST link_file",
                                     "CWD link_dir", "CWD rel_up", "SITE CHMOD 777 link_file"])
def test_commands_through_links_are_refused(jail, command):
    _, client, _ = jail
    refused(client.sendcmd, command)


@pytest.mark.parametrize("command", ["STOR link_dir/new", "STOR link_file", "APPE link_file",
                                     "STOR rel_up/new", "STOU link_dir/x", "STOU rel_up/x"])
def test_writes_through_links_are_refused(jail, command):
    _, client, _ = jail
    refused(client.storbinary, command, io.BytesIO(b"pwned"))


def test_mkd_and_rename_through_links_are_refused(jail):
    _, client, _ = jail
    refused(client.mkd, "link_dir/x")
    client.storbinary("STOR mine", io.BytesIO(b"m"))
    client.sendcmd("RNFR mine")
    refused(client.sendcmd, "RNTO link_dir/moved")
    refused(client.sendcmd, "RNFR link_dir/secret.txt")


def test_stou_in_the_root_still_works(jail):
    daemon, client, _ = jail
    reply = client.storbinary("STOU", io.BytesIO(b"unique"))
    assert reply.startswith("226")
    assert any(p.read_bytes() == b"unique" for p in daemon.root.iterdir() if p.is_file())


def test_listings_do_not_reveal_outside_targets(jail):
    _, client, outside = jail
    lines: list[str] = []
    client.retrlines("LIST", lines.append)
    text = "\n".join(lines)
    assert "link_file" in text and "link_dir" in text
    assert str(outside) not in text and "outside" not in text.replace("rel_up", "")
    assert "12345" not in text
    assert "inside_link -> /sub/ok.txt" in text  # links that stay inside are shown
    facts: list[str] = []
    client.retrlines("MLSD", facts.append)
    assert not any("size=12345" in f for f in facts), facts


def test_links_inside_the_root_work(jail):
    _, client, _ = jail
    out = io.BytesIO()
    client.retrbinary("RETR inside_link", out.write)
    assert out.getvalue() == b"ok"


def test_nul_byte_in_a_path(jail):
    _, client, _ = jail
    assert refused(client.sendcmd, "SIZE sub/ok.txt\x00x").startswith("501")


def test_overlong_and_non_utf8_paths(jail):
    _, client, _ = jail
    deep = "../" * 600 + "outside/secret.txt"  # 1818 characters, under the 2048 cap
    refused(retr, client, deep)
    # Invalid UTF-8 is decoded with replacement characters: just a missing file.
    client.sock.sendall(b"SIZE \xff\xfe/../outside/secret.txt\r\n")
    with pytest.raises(ftplib.error_perm, match="550"):
        client.getresp()
    client.sock.sendall(b"CWD " + b"a" * 3000 + b"\r\nNOOP\r\n")
    replies = [client.getline() for _ in range(3)]
    assert any(r.startswith("500 Command too long") for r in replies)
    assert client.voidcmd("NOOP").startswith("200")


def test_symlink_swapped_in_during_commands_never_leads_out(jail):
    """A directory raced against a symlink to outside while files are stored and read."""
    import threading

    daemon, client, outside = jail
    swap = daemon.root / "swap"
    real = daemon.root / "real"
    real.mkdir()
    (real / "secret.txt").write_bytes(b"inside")
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for target in (real, outside):
                tmp = daemon.root / ".swap.tmp"
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                tmp.symlink_to(target)
                os.replace(tmp, swap)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        for i in range(40):
            try:
                client.storbinary(f"STOR swap/new{i}", io.BytesIO(b"pwned"))
            except ftplib.error_perm:
                pass
            out = io.BytesIO()
            try:
                client.retrbinary("RETR swap/secret.txt", out.write)
            except ftplib.error_perm:
                pass
            assert out.getvalue() in (b"", b"inside"), "read a file outside the root"
    finally:
        stop.set()
        flipper.join(5)
    # The jail fixture asserts nothing was written outside.
