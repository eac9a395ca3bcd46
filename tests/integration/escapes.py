"""The escape-test tree shared by the confinement (virtual) and isolation (chroot) tests."""

from __future__ import annotations

from pathlib import Path

SECRET = b"s" * 12345  # a size that must never show up in a listing


def build_escape_tree(daemon, inside_target: str | Path) -> Path:
    """A secret file outside the daemon's root and links that try to reach it; returns
    the outside directory. `inside_target` is the target of the harmless `inside_link`
    (absolute for virtual confinement, relative for a chroot, where host paths mean
    nothing)."""
    outside = daemon.tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root = daemon.root
    (root / "sub").mkdir()
    (root / "sub" / "ok.txt").write_bytes(b"ok")
    (root / "link_dir").symlink_to(outside)
    (root / "link_file").symlink_to(outside / "secret.txt")
    (root / "rel_up").symlink_to("../outside")
    (root / "inside_link").symlink_to(inside_target)
    return outside
