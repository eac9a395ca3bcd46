"""Per-user settings applied at login, and upload safety.

A mixin of SessionHandler: after a successful login it applies the user's
overrides from the users file (bandwidth, umask) over the daemon's
[uploads] settings, and it finishes atomic uploads (rename into place on
success, delete on failure or abort). Anonymous users may only create new
files, never overwrite.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from pyftpdlib.handlers import ThrottledDTPHandler

if TYPE_CHECKING:
    from pyftpdlib.handlers import FTPHandler as _Base
else:
    _Base = object

log = logging.getLogger("ftpd.session")


def throttled(base: type, download_rate: int, upload_rate: int) -> type:
    """`base` (plain or TLS data channel) with pyftpdlib's bandwidth throttling."""
    # ThrottledDTPHandler calls super() throughout, so it layers over any DTP class.
    return type(f"Throttled{base.__name__}", (ThrottledDTPHandler, base), {
        "read_limit": upload_rate, "write_limit": download_rate})


class AtomicCommit:
    """Data channel mixin: put a completed atomic upload in place *before* the
    226 reply, so a client that asks for the file right after finds it."""

    def close(self) -> None:
        channel: Any = self
        fs = channel.cmd_channel.fs
        f = channel.file_obj
        if (not channel._closed and channel.receive and channel.transfer_finished
                and f is not None and fs is not None and f.name in fs.pending_uploads):
            try:
                f.close()
                fs.commit_upload(f.name)
            except OSError as err:
                log.error("could not put upload %s in place: %s", f.name, err)
        super().close()  # type: ignore[misc]


class UserPolicy(_Base):
    """Class attributes are set by build_handler() from [uploads]."""

    upload_umask = 0o022
    atomic_uploads = False

    def apply_user_settings(self, username: str) -> None:
        """Called right after login, once self.fs exists."""
        user = self.authorizer.user(username)
        self.fs.umask = user.umask if user and user.umask is not None else self.upload_umask
        self.fs.atomic = self.atomic_uploads
        if user and (user.download_rate or user.upload_rate):
            self.dtp_handler = throttled(type(self).dtp_handler, user.download_rate,
                                         user.upload_rate)
        if self.atomic_uploads:
            self.dtp_handler = type("AtomicDataChannel", (AtomicCommit, self.dtp_handler), {})

    def user_session_limit(self, username: str, default: int) -> int:
        user = self.authorizer.user(username)
        return user.max_sessions if user and user.max_sessions is not None else default

    def ftp_STOR(self, file: str, mode: str = "w") -> Any:
        if self.authorizer.is_anonymous(self.username) and os.path.lexists(file):
            self.respond("550 Anonymous users may not overwrite or append to files.")
            return None
        return super().ftp_STOR(file, mode)

    def on_file_received(self, file: str) -> None:
        if self.fs is not None and file in self.fs.pending_uploads:
            try:
                self.fs.commit_upload(file)
            except OSError as err:
                log.error("could not put upload %s in place: %s", file, err)
        super().on_file_received(file)

    def on_incomplete_file_received(self, file: str) -> None:
        if self.fs is not None and file in self.fs.pending_uploads:
            try:
                self.fs.discard_upload(file)
            except OSError as err:
                log.error("could not delete failed upload %s: %s", file, err)
        super().on_incomplete_file_received(file)

    def upload_path(self, filename: str) -> str:
        """The name an upload has (or will have) in the user's tree."""
        if self.fs is None:
            return filename
        final = self.fs.committed_uploads.pop(filename, None) or self.fs.pending_uploads.get(
            filename, filename)
        return self.fs.fs2ftp(final)

    def close(self) -> None:
        # A session that ends mid-upload: pyftpdlib closes the data channel,
        # which calls on_incomplete_file_received; anything still pending is
        # removed here so no temporary file is left behind.
        fs = self.fs
        super().close()
        if fs is not None:
            for temp in list(fs.pending_uploads):
                try:
                    fs.discard_upload(temp)
                except OSError:
                    pass
