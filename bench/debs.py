"""Unpack Debian packages of the peer servers into a cache directory, never installing them.

The three peers conflict with each other as packages and their maintainer scripts would
start system services, so they are fetched with `apt-get download` and unpacked with
`dpkg -x` (which runs no maintainer script). Shared libraries a peer needs that the
machine lacks are unpacked the same way and found through LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MAX_PACKAGES = 40  # bound on the dependency walk
_DEP_NAME = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)")
_SHARED_OBJECT = re.compile(r"\.so(\.[0-9]+)*$")


@dataclass
class Unpacked:
    """What the cache holds after `ensure`: the unpacked root and package versions."""

    root: Path
    versions: dict[str, str] = field(default_factory=dict)

    def library_path(self) -> str:
        """LD_LIBRARY_PATH covering every directory under the root that holds shared objects."""
        dirs: set[str] = set()
        for top in ("lib", "usr/lib"):
            base = self.root / top
            if not base.is_dir():
                continue
            for path in base.rglob("*.so*"):
                # Shared objects only (not e.g. proftpd.socket); proftpd's modules dir is not
                # a library directory.
                if _SHARED_OBJECT.search(path.name) and path.parent.name != "proftpd":
                    dirs.add(str(path.parent))
        return ":".join(sorted(dirs))

    def binary(self, relative: str) -> Path:
        return self.root / relative


def parse_depends(field_text: str) -> list[list[str]]:
    """Split a Depends field into groups of alternatives, names only (versions/arch dropped)."""
    groups: list[list[str]] = []
    for group in field_text.split(","):
        names = []
        for alternative in group.split("|"):
            match = _DEP_NAME.match(alternative)
            if match:
                names.append(match.group(1).split(":")[0])
        if names:
            groups.append(names)
    return groups


def missing_libraries(groups: list[list[str]], installed: set[str]) -> list[str]:
    """Library packages to unpack: groups none of whose alternatives is installed, and whose
    first alternative is a shared library package (lib*). Tools such as adduser or debconf
    are needed only by maintainer scripts, which we never run."""
    wanted = []
    for names in groups:
        if any(name in installed for name in names):
            continue
        if names[0].startswith("lib"):
            wanted.append(names[0])
    return wanted


def _dpkg_installed(name: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name],
        capture_output=True, text=True, check=False,
    )
    return result.returncode == 0 and result.stdout.strip().endswith(" installed")


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def _download(name: str, debs_dir: Path) -> Path:
    existing = sorted(debs_dir.glob(f"{name}_*.deb"))
    if existing:
        return existing[-1]
    # _apt cannot write into a root-only directory; apt then downloads as root with a warning.
    result = subprocess.run(
        ["apt-get", "download", "-q", name], cwd=debs_dir, capture_output=True, text=True,
        check=False, timeout=300,
    )
    found = sorted(debs_dir.glob(f"{name}_*.deb"))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"apt-get download {name} failed (run 'apt-get update' first?): "
            f"{result.stderr.strip()[-500:]}"
        )
    return found[-1]


def ensure(packages: list[str], cache: Path) -> Unpacked:
    """Download and unpack `packages` plus their missing library dependencies into cache/root."""
    debs_dir = cache / "debs"
    root = cache / "root"
    debs_dir.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    unpacked = Unpacked(root=root)
    queue = list(packages)
    seen: set[str] = set()
    installed_cache: dict[str, bool] = {}

    def installed(name: str) -> bool:
        if name not in installed_cache:
            installed_cache[name] = _dpkg_installed(name)
        return installed_cache[name]

    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if len(seen) > MAX_PACKAGES:
            raise RuntimeError(f"dependency walk exceeded {MAX_PACKAGES} packages")
        deb = _download(name, debs_dir)
        stamp = root / f".unpacked-{deb.name}"
        if not stamp.exists():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            stamp.touch()
        unpacked.versions[name] = _deb_field(deb, "Version")
        groups = parse_depends(_deb_field(deb, "Depends") + "," + _deb_field(deb, "Pre-Depends"))
        candidates = {n for g in groups for n in g}
        present = {n for n in candidates if installed(n)}
        queue.extend(n for n in missing_libraries(groups, present) if n not in seen)
    return unpacked


def check_links(binary: Path, library_path: str) -> list[str]:
    """Shared objects `ldd` cannot find for `binary` with the given LD_LIBRARY_PATH."""
    env = dict(os.environ, LD_LIBRARY_PATH=library_path)
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env,
                            check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]
