"""The splice pipe of the upload path, on real kernel pipes and files."""

from __future__ import annotations

import fcntl
import os

from ftpd import transfer


def test_splice_pipe_is_enlarged_and_non_blocking():
    pipe = transfer.open_splice_pipe()
    assert pipe is not None
    r, w = pipe
    try:
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) >= transfer.PIPE_SIZE
        assert not os.get_blocking(r) and not os.get_blocking(w)
        assert os.get_inheritable(r) is False
    finally:
        os.close(r)
        os.close(w)


def test_a_pipe_larger_than_the_kernel_allows_is_refused():
    """Unprivileged processes (workers) cannot exceed fs.pipe-max-size: None, not an error."""
    with open("/proc/sys/fs/pipe-max-size") as f:
        limit = int(f.read())
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # as a worker would be: unprivileged
        status = 1
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            too_big = transfer.open_splice_pipe(limit * 2)
            allowed = transfer.open_splice_pipe(limit)
            os.write(w, f"{too_big is None} {allowed is not None}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    answer = os.read(r, 100).decode()
    os.close(r)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True True"


def bare_channel(pipe: tuple[int, int]) -> transfer.DataChannel:
    # Only the pipe-draining part is exercised: no socket, no event loop.
    channel = object.__new__(transfer.DataChannel)
    channel._pipe = pipe
    return channel


def drain(path, data: bytes, flags: int) -> transfer.DataChannel:
    """Put `data` in a fresh splice pipe and drain it into `path` opened with `flags`."""
    pipe = transfer.open_splice_pipe()
    assert pipe is not None
    os.write(pipe[1], data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags)
    channel = bare_channel(pipe)
    try:
        channel._drain_pipe(fd, len(data))
    finally:
        os.close(fd)
    return channel


def test_drain_moves_the_pipe_into_the_file(tmp_path):
    data = os.urandom(300_000)
    channel = drain(tmp_path / "f", data, 0)
    assert (tmp_path / "f").read_bytes() == data
    assert channel._pipe is not None  # still splicing
    channel._close_pipe()


def test_drain_falls_back_to_copying_when_the_file_refuses_splice(tmp_path):
    """splice() into an O_APPEND file fails with EINVAL: the bytes already in
    the pipe are copied, the pipe is closed, the channel goes on buffered."""
    (tmp_path / "f").write_bytes(b"head")
    data = os.urandom(200_000)
    channel = drain(tmp_path / "f", data, os.O_APPEND)
    assert (tmp_path / "f").read_bytes() == b"head" + data
    assert channel._pipe is None
