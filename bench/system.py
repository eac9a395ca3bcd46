"""The machine side of a run: the temporary system user, its files, facts, /proc readings."""

from __future__ import annotations

import os
import platform
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER = "ftpbench"
GECOS_MARK = "ftpd benchmark temporary user"
HOME_PREFIX = "ftpbench-home-"
HOME_PARENT = Path("/var/tmp")
SMALL_FILE_SIZE = 64 * 1024


@dataclass
class BenchUser:
    """The temporary account every server authenticates, and its chroot root."""

    name: str
    password: str
    home: Path
    uid: int
    gid: int

    @property
    def big_file(self) -> Path:
        return self.home / "pub" / "big.bin"

    @property
    def small_file(self) -> Path:
        return self.home / "pub" / "small.bin"

    @property
    def upload_dir(self) -> Path:
        return self.home / "up"


def _remove_account(name: str) -> str | None:
    """userdel (and groupdel if the group survived); an error message or None."""
    result = subprocess.run(["userdel", name], check=False, capture_output=True, text=True)
    subprocess.run(["groupdel", name], check=False, capture_output=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        return None
    return f"userdel {name} failed: {result.stderr.strip()}"


def remove_leftover_user(name: str = USER) -> None:
    """Remove an account left by an interrupted run, but only one this harness created."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    if entry.pw_gecos != GECOS_MARK:
        raise RuntimeError(
            f"user {name!r} exists and was not made by the benchmark; refusing to touch it"
        )
    home = Path(entry.pw_dir)
    problem = _remove_account(name)
    if problem:
        raise RuntimeError(f"leftover benchmark user: {problem}")
    if home.parent == HOME_PARENT and home.name.startswith(HOME_PREFIX):
        shutil.rmtree(home, ignore_errors=True)


def create_user(name: str = USER) -> BenchUser:
    """Create the account with a SHA-512 crypt password and a root-owned home (chroot root).

    Layout: home/ (root 0755) with pub/ (read-only files) and up/ (owned by the user):
    vsftpd refuses a chroot root the user can write to, so uploads go to up/.
    """
    remove_leftover_user(name)
    password = secrets.token_urlsafe(18)
    home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX, dir=HOME_PARENT))
    try:
        home.chmod(0o755)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if not hashed.startswith("$6$"):
            raise RuntimeError("openssl did not produce a SHA-512 crypt hash")
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
             "/usr/sbin/nologin", "--user-group", "--comment", GECOS_MARK,
             "--password", hashed, name],
            check=True, capture_output=True,
        )
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    entry = pwd.getpwnam(name)
    user = BenchUser(name, password, home, entry.pw_uid, entry.pw_gid)
    (home / "pub").mkdir(mode=0o755)
    user.upload_dir.mkdir(mode=0o755)
    os.chown(user.upload_dir, user.uid, user.gid)
    user.small_file.write_bytes(os.urandom(SMALL_FILE_SIZE))
    return user


def remove_user(user: BenchUser) -> str | None:
    """Remove the account and its home; an error message if the account could not go."""
    problem = _remove_account(user.name)
    if user.home.parent == HOME_PARENT and user.home.name.startswith(HOME_PREFIX):
        shutil.rmtree(user.home, ignore_errors=True)
    return problem


def write_big_file(path: Path, size: int) -> None:
    """Random (incompressible) content, then read back once so the page cache holds it."""
    chunk = 8 * 1024 * 1024
    with path.open("wb") as out:
        left = size
        while left > 0:
            n = min(chunk, left)
            out.write(os.urandom(n))
            left -= n
    path.chmod(0o644)
    warm_page_cache(path)


def warm_page_cache(path: Path) -> None:
    with path.open("rb", buffering=0) as src:
        while src.read(8 * 1024 * 1024):
            pass


def clear_uploads(user: BenchUser) -> None:
    """Delete uploaded files and flush dirty pages so the next timed write starts clean."""
    for entry in user.upload_dir.iterdir():
        if entry.is_file():
            entry.unlink()
    os.sync()


# --- /proc readings -----------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root_pid: int) -> list[int]:
    """root_pid and all its descendants alive now."""
    children = _children_map()
    tree, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22): tells a PID from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def pss_kib(pid: int) -> int | None:
    """Proportional set size of one process (kernel's smaps_rollup), None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_pss_kib(root_pid: int) -> tuple[int, int]:
    """(PSS summed over the process tree in KiB, number of processes)."""
    total = count = 0
    for pid in process_tree(root_pid):
        value = pss_kib(pid)
        if value is not None:
            total += value
            count += 1
    return total, count


def cpu_busy_sample() -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat, for whole-machine CPU use between two samples."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def cpu_busy_over(seconds: float) -> float:
    """Share of all CPUs busy over the next `seconds` (other work on the machine)."""
    busy0, total0 = cpu_busy_sample()
    time.sleep(seconds)
    busy1, total1 = cpu_busy_sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = "Linux"
    try:
        with open("/etc/os-release") as f:
            match = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            if match:
                os_name = match.group(1)
    except OSError:
        pass
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": os_name,
        "python": platform.python_version(),
        "curl": curl.stdout.split("\n", 1)[0].split(" (")[0] if curl.stdout else "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
