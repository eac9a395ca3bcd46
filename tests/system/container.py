"""A real systemd 252 as PID 1 in systemd-nspawn, for tests of ftpd's units.

The rootfs is Debian bookworm made by mmdebstrap from the mirror this host's
apt uses, cached as `.cache/rootfs-bookworm-<key>.tar.zst` (and unpacked beside
it); the key changes with the package list and the mirror. Containers boot
with `--volatile=overlay`, so the unpacked tree stays pristine, and
`--private-network`, so nothing they do reaches a network. They are driven
with nsenter: this host's PID 1 is not systemd and there is no machined.

Facts this relies on are in shared/notes/systemd-in-ci.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
SUITE = "bookworm"
VARIANT = "minbase"
# Everything the tests need inside: the container has no network, so the
# .deb's dependencies must already be there.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "iproute2",
    "procps",
    "logrotate",
    "libpam-runtime",
)
# Host tools -> the apt package that has them.
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "zstd": "zstd",
}
CONTAINER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))


class ContainerError(RuntimeError):
    pass


def ensure_host_tools() -> None:
    """Install the missing host tools with apt-get (root only)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ContainerError(f"missing host packages (install as root): {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600,
                       check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)


def debian_sources(suite: str = SUITE) -> list[str]:
    """One-line apt sources for `suite` (and -updates, -security) as this host has them."""
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    entries: list[tuple[str, str, str, str]] = []  # uri, suite, components, signed-by
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for item in fields.get("suites", "").split():
                        entries.append((uri, item, fields.get("components", "main"),
                                        fields.get("signed-by", "")))
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                match = re.match(r"\s*deb\s+(?:\[([^]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
                if match:
                    options, uri, item, components = match.groups()
                    signed = re.search(r"signed-by=(\S+)", options or "")
                    entries.append((uri, item, components.strip(),
                                    signed.group(1) if signed else ""))
    lines = []
    for uri, item, components, signed_by in entries:
        if item in wanted:
            option = f"[signed-by={signed_by}] " if signed_by.startswith("/") else ""
            lines.append(f"deb {option}{uri} {item} {components}")
    if not any(f" {suite} " in line for line in lines):
        raise ContainerError(f"this host's apt has no source for {suite}")
    return lines


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_key() -> str:
    recipe = {"suite": SUITE, "variant": VARIANT, "packages": PACKAGES,
              "sources": debian_sources()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_tarball() -> Path:
    """The cached rootfs tarball, built with mmdebstrap (~25 s) when missing."""
    name = f"rootfs-{SUITE}-{rootfs_key()}"
    tarball = CACHE / f"{name}.tar.zst"
    with _locked("rootfs"):
        if tarball.exists():
            return tarball
        for old in CACHE.glob(f"rootfs-{SUITE}-*"):  # earlier recipes
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        partial = tarball.with_name(f".{tarball.name}.partial.tar.zst")
        command = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
                   SUITE, str(partial), *debian_sources()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                                check=False)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ContainerError(f"mmdebstrap failed:\n{result.stderr[-4000:]}")
        partial.rename(tarball)
        return tarball


def rootfs_dir() -> Path:
    """The cached tarball unpacked (3-4 s, once); containers never write to it."""
    tarball = rootfs_tarball()
    directory = tarball.with_name(tarball.name.removesuffix(".tar.zst"))
    with _locked("rootfs"):
        if (directory / "usr").is_dir():
            return directory
        partial = Path(tempfile.mkdtemp(prefix=".unpack-", dir=CACHE))
        try:
            subprocess.run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(partial),
                            "--numeric-owner", "--xattrs", "--xattrs-include=*"],
                           check=True, capture_output=True, timeout=300)
            partial.chmod(0o755)
            partial.rename(directory)
        finally:
            if partial.exists():
                shutil.rmtree(partial)
        return directory


class Container:
    """One booted container. Use as a context manager: exit always powers off."""

    def __init__(self, rootfs: Path, binds_ro: Mapping[Path, str] | None = None,
                 kernel_args: Sequence[str] = ()) -> None:
        self.rootfs = rootfs
        self.binds_ro = dict(binds_ro or {})
        self.kernel_args = list(kernel_args)
        self.name = f"ftpd-test-{uuid.uuid4().hex[:8]}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = self.workdir / "nspawn.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.boot_seconds = 0.0
        self.facts: dict[str, str] = {}  # what fixtures observed, for tests to check
        self._cgroups = [root / self.name for root in CGROUP_ROOTS if root.is_dir()]

    # --- life cycle

    def __enter__(self) -> Container:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.poweroff()

    def _enter_own_cgroup(self) -> None:
        # Runs in the child before exec: nspawn puts the container's payload
        # below its own cgroup, so each container needs a parent of its own.
        for cgroup in self._cgroups:
            cgroup.mkdir(exist_ok=True)
            (cgroup / "cgroup.procs").write_text("0")

    def boot(self, timeout: float = 60.0) -> None:
        """Start nspawn and wait for the container's systemd to report READY=1."""
        started = time.monotonic()
        notify_path = self.workdir / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            command = [
                "systemd-nspawn", "--quiet", "--directory", str(self.rootfs), "--boot",
                f"--machine={self.name}", "--register=no", "--keep-unit",
                "--private-network", "--volatile=overlay", "--link-journal=no",
                "--resolv-conf=off", "--timezone=off", "--notify-ready=yes",
                "--console=read-only",
            ]
            command += [f"--bind-ro={host}:{inside}" for host, inside in self.binds_ro.items()]
            command += ["systemd.show_status=false", *self.kernel_args]
            env = {"PATH": CONTAINER_PATH, "NOTIFY_SOCKET": str(notify_path),
                   "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, preexec_fn=self._enter_own_cgroup)
            ready = False
            while not (ready and self.leader):
                remaining = started + timeout - time.monotonic()
                if remaining <= 0:
                    raise ContainerError(f"container not ready after {timeout} s\n{self.log()}")
                if self.process.poll() is not None:
                    raise ContainerError(f"systemd-nspawn exited with {self.process.returncode}"
                                         f"\n{self.log()}")
                notify.settimeout(min(remaining, 0.5))
                try:
                    message = notify.recv(4096).decode(errors="replace")
                except TimeoutError:
                    continue
                for line in message.splitlines():
                    if line == "READY=1":
                        ready = True
                    elif line.startswith("X_NSPAWN_LEADER_PID="):
                        self.leader = int(line.partition("=")[2])
        self.boot_seconds = time.monotonic() - started

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def poweroff(self, timeout: float = 30.0) -> None:
        """Power off; if the container does not go, kill its PID 1, then nspawn."""
        process = self.process
        if process is not None and process.poll() is None:
            if self.leader:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader and process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        self.process = None
        self.leader = None
        self._remove_cgroups()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        for cgroup in self._cgroups:
            if not cgroup.exists():
                continue
            for _ in range(50):
                children = sorted((p for p in cgroup.rglob("*") if p.is_dir()),
                                  key=lambda p: len(p.parts), reverse=True)
                try:
                    for child in [*children, cgroup]:
                        child.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)

    # --- running things inside

    def _command(self, args: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
        if not self.leader:
            raise ContainerError("container is not running")
        variables = [f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "SYSTEMD_COLORS=0",
                     "SYSTEMD_PAGER=", *(f"{k}={v}" for k, v in (env or {}).items())]
        return ["nsenter", "--target", str(self.leader), "--all", "env", "-i", *variables,
                *args]

    def run(self, *args: str, input: str | None = None, timeout: float = 60.0,
            check: bool = True, env: Mapping[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._command(args, env), input=input, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ContainerError(f"{' '.join(args)} exited with {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def popen(self, *args: str, env: Mapping[str, str] | None = None,
              ) -> subprocess.Popen[str]:
        """Start a command inside without waiting (pipes for stdin and stdout)."""
        return subprocess.Popen(self._command(args, env), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sh(self, script: str, check: bool = True,
           timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-euc", script, check=check, timeout=timeout)

    def write(self, path: str, content: str, mode: str = "0644") -> None:
        self.run("install", "-D", "-m", mode, "/dev/stdin", path, input=content)

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-q", *args).stdout

    def wait_until_running(self, timeout: float = 60.0) -> str:
        """`systemctl is-system-running --wait`, retried while it says 'offline'."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run("systemctl", "is-system-running", "--wait", check=False,
                              timeout=max(deadline - time.monotonic(), 1.0))
            state = result.stdout.strip()
            if state not in ("offline", "initializing", "starting", ""):
                return state
            time.sleep(0.1)
        raise ContainerError(f"system still {state!r} after {timeout} s")
