"""Virtual confinement of a session to its root directory.

pyftpdlib checks `realpath()` and then uses the path, which leaves a window
for a symlink swapped in between; it skips the check for STOU; LIST shows
where a symlink points and MLSD stats through it. Here files are opened
relative to a directory descriptor whose real location is verified after it
is opened, with O_NOFOLLOW on the last component, so whatever is swapped in,
nothing outside the root is opened, and nothing about outside targets is shown.
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import IO, Any

from pyftpdlib.filesystems import AbstractedFS

_OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+": os.O_RDWR,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def _outside(path: str) -> OSError:
    return PermissionError(errno.EACCES, "Path is outside the user's root directory", path)


class ConfinedFS(AbstractedFS):
    """AbstractedFS that cannot be led outside `root` by `..` or symlinks."""

    def __init__(self, root: str, cmd_channel: Any) -> None:
        super().__init__(root, cmd_channel)
        self._real_root = os.path.realpath(root)
        # Set after login from [uploads] and the user's overrides. Workers run
        # with process umask 0, so this is the only mask applied.
        self.umask = 0o022
        self.atomic = False
        self.pending_uploads: dict[str, str] = {}  # temporary name -> final name
        self.committed_uploads: dict[str, str] = {}  # until the transfer is logged

    def _inside(self, real: str) -> bool:
        root = self._real_root
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def validpath(self, path: str) -> bool:
        return self._inside(os.path.realpath(path))

    def _open_dir(self, directory: str) -> int:
        """A descriptor of `directory`, verified to be inside the root once opened."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            os.close(fd)
            raise
        if not self._inside(real):
            os.close(fd)
            raise _outside(directory)
        return fd

    def _open_beneath(self, path: str, flags: int, mode: int = 0o666) -> int:
        # Resolve symlinks once (they may legitimately point inside the root),
        # then open the resolved name with no further symlink following.
        real = os.path.realpath(path)
        if not self._inside(real):
            raise _outside(path)
        directory, name = os.path.split(real)
        dir_fd = self._open_dir(directory)
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def open(self, filename: str, mode: str) -> IO[Any]:
        flags = _OPEN_FLAGS[mode.replace("b", "")]
        perms = 0o666 & ~self.umask
        if self.atomic and mode.startswith("w"):
            return self._open_atomic(filename, mode, perms)
        return open(filename, mode, opener=lambda p, _f: self._open_beneath(p, flags, perms))

    def _open_atomic(self, filename: str, mode: str, perms: int) -> IO[Any]:
        """Open a hidden temporary file beside `filename`; commit_upload() renames it."""
        real = os.path.realpath(filename)
        if not self._inside(real):
            raise _outside(filename)
        if os.path.isdir(real):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", filename)
        directory, name = os.path.split(filename)
        for _ in range(100):
            temp = os.path.join(directory, f".{name}.ftpd-upload-{secrets.token_hex(4)}")
            try:
                f = open(temp, mode,
                         opener=lambda p, _f: self._open_beneath(p, _OPEN_FLAGS["x"], perms))
            except FileExistsError:
                continue
            self.pending_uploads[temp] = real
            return f
        raise FileExistsError(errno.EEXIST, "No usable temporary name", filename)

    def commit_upload(self, temp: str) -> None:
        """Put a completed upload in place (rename within its verified directory)."""
        final = self.pending_uploads.pop(temp)
        self.committed_uploads[temp] = final
        dir_fd = self._open_dir(os.path.dirname(final))
        try:
            os.rename(os.path.basename(temp), os.path.basename(final),
                      src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def discard_upload(self, temp: str) -> None:
        """Delete a failed or aborted upload's temporary file."""
        final = self.pending_uploads.pop(temp, None)
        if final is None:
            return
        dir_fd = self._open_dir(os.path.dirname(final))
        try:
            os.unlink(os.path.basename(temp), dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)

    # Every operation below works on the last component of a path relative to
    # a descriptor of its parent directory that was verified after opening, so
    # a symlink swapped in after the command's path check cannot lead out.

    def _beneath(self, path: str) -> tuple[int, str]:
        """(verified parent directory descriptor, last component) of `path`."""
        directory, name = os.path.split(os.path.normpath(path))
        if name in ("", ".", ".."):
            raise PermissionError(errno.EACCES, "Invalid path", path)
        return self._open_dir(directory), name

    def mkdir(self, path: str) -> None:
        dir_fd, name = self._beneath(path)
        try:
            os.mkdir(name, 0o777 & ~self.umask, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def rmdir(self, path: str) -> None:
        dir_fd, name = self._beneath(path)
        try:
            os.rmdir(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self, path: str) -> None:
        dir_fd, name = self._beneath(path)
        try:
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def rename(self, src: str, dst: str) -> None:
        src_fd, src_name = self._beneath(src)
        try:
            dst_fd, dst_name = self._beneath(dst)
            try:
                os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _open_node(self, path: str) -> int:
        """A read-only descriptor of the file or directory itself (never a link's target)."""
        real = os.path.realpath(path)
        if not self._inside(real):
            raise _outside(path)
        dir_fd, name = self._beneath(real) if real != self._real_root else (
            self._open_dir(real), ".")
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                           dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def chmod(self, path: str, mode: int) -> None:
        fd = self._open_node(path)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def utime(self, path: str, timeval: float) -> None:
        fd = self._open_node(path)
        try:
            os.utime(fd, (timeval, timeval))
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        real = os.path.realpath(path)
        if not self._inside(real):
            raise _outside(path)
        fd = self._open_dir(real)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    listdirinfo = listdir

    def mkstemp(self, suffix: str = "", prefix: str = "", dir: str | None = None,
                mode: str = "wb") -> IO[Any]:
        directory = dir or self.ftp2fs(self.cwd)
        for _ in range(100):
            name = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}{suffix}")
            try:
                return open(name, mode,
                            opener=lambda p, _f: self._open_beneath(p, _OPEN_FLAGS["x"],
                                                                   0o666 & ~self.umask))
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "No usable unique file name found", directory)

    def readlink(self, path: str) -> str:
        """A link's target as a path in the user's tree; outside targets stay hidden."""
        real = os.path.realpath(path)
        if not self._inside(real):
            raise _outside(path)
        return self.fs2ftp(real)

    def stat(self, path: str) -> os.stat_result:
        """stat() through links inside the root; the link itself for outside targets."""
        if not self._inside(os.path.realpath(path)):
            return os.lstat(path)
        return os.stat(path)
