"""A network-namespace lab reproducing FTP's NAT and firewall situations.

Topology (every host is a network namespace named ``<tag>-<host>``, ``tag = ftpdlab<pid>``)::

    cli 10.200.1.2 ─┐                               ┌─ srv 10.200.2.2
                    ├─ [pub] rtr 10.200.1.1 │ 10.200.2.1 [inside] ─┤
    crtr 10.200.1.3 ┘   (bridges in rtr)                        └─ lan 10.200.2.3
     └ 10.200.3.1 ── cpc 10.200.3.2

- ``rtr`` is the server's NAT router: it DNATs 10.200.1.1:<control port> and exactly the
  passive range to srv, drops every other new inbound flow (named counters ``in_drop`` for
  packets addressed to rtr itself, ``fwd_drop`` for forwarded ones) and masquerades the
  inside subnet's outbound traffic (so active-mode data from srv arrives from 10.200.1.1).
- ``crtr`` is a client-side home router masquerading ``cpc`` behind 10.200.1.3.
- ``lan`` sits next to srv on the inside bridge and reaches it directly (split horizon).

Every command runs under ``ip netns exec``, which already gives it a private mount
namespace; the lab bind-mounts a per-host hosts file over ``/etc/hosts`` in it, so a test
controls name resolution with :meth:`Lab.hosts_file` without touching the machine's file.

Addresses are the same in every lab, which is fine: parallel labs (pytest-xdist, two
checkouts) live in disjoint namespaces and only the names carry the pid.

Starting the daemon in srv from a test (``lab`` is the fixture in conftest.py)::

    lab.set_rtr_forward(2121, (30000, 30009))       # what the config below listens on
    lab.hosts_file("srv", {"ftp.example.test": PUBLIC_IP})  # if it resolves a name
    daemon = lab.popen("srv", [sys.executable, "-m", "ftpd", "serve", "-c", str(config)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ...wait until ``lab.connect("cli", PUBLIC_IP, 2121).ok`` or the control port answers...
    lab.run("cli", "lftp", "-e", "set ftp:prefer-epsv no; cat f; quit",
            "ftp://10.200.1.1:2121", timeout=20)
    os.kill(daemon.pid, signal.SIGTERM)   # .pid is the daemon itself, not a wrapper
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .probes import LISTENER_SCRIPT, PROBE_SCRIPT, Listener, Probe

PREFIX = "ftpdlab"

PUBLIC_IP = "10.200.1.1"  # rtr, the address FTP clients dial
CLI_IP = "10.200.1.2"
CRTR_WAN_IP = "10.200.1.3"  # what srv sees for traffic from cpc
RTR_INSIDE_IP = "10.200.2.1"
SRV_IP = "10.200.2.2"
LAN_IP = "10.200.2.3"
CRTR_LAN_IP = "10.200.3.1"
CPC_IP = "10.200.3.2"

ROUTERS = ("rtr", "crtr")
END_HOSTS = ("cli", "srv", "cpc", "lan")
HOSTS = (*ROUTERS, *END_HOSTS)

DEFAULT_CONTROL_PORT = 21
DEFAULT_PASSIVE_RANGE = (30000, 30009)

# Veth pairs as (host, device, peer host, peer device); rtr's ends are enslaved to bridges.
_LINKS = (
    ("cli", "eth0", "rtr", "p-cli"),
    ("crtr", "wan", "rtr", "p-crtr"),
    ("srv", "eth0", "rtr", "p-srv"),
    ("lan", "eth0", "rtr", "p-lan"),
    ("cpc", "eth0", "crtr", "lan"),
)

# `ip -batch` scripts configuring each namespace once its links exist.
_IP_SETUP = {
    "rtr": """
        link add pub type bridge
        link add inside type bridge
        link set p-cli master pub
        link set p-crtr master pub
        link set p-srv master inside
        link set p-lan master inside
        addr add 10.200.1.1/24 dev pub
        addr add 10.200.2.1/24 dev inside
        link set pub up
        link set inside up
        link set p-cli up
        link set p-crtr up
        link set p-srv up
        link set p-lan up
    """,
    "crtr": """
        addr add 10.200.1.3/24 dev wan
        addr add 10.200.3.1/24 dev lan
        link set wan up
        link set lan up
        route add default via 10.200.1.1
    """,
    "cli": """
        addr add 10.200.1.2/24 dev eth0
        link set eth0 up
        route add default via 10.200.1.1
    """,
    "srv": """
        addr add 10.200.2.2/24 dev eth0
        link set eth0 up
        route add default via 10.200.2.1
    """,
    "lan": """
        addr add 10.200.2.3/24 dev eth0
        link set eth0 up
        route add default via 10.200.2.1
    """,
    "cpc": """
        addr add 10.200.3.2/24 dev eth0
        link set eth0 up
        route add default via 10.200.3.1
    """,
}

# Routers forward. bridge-nf-call-* is 1 in every new namespace whenever br_netfilter is
# loaded; it would push traffic *bridged* inside rtr (lan <-> srv, cli <-> crtr) through
# rtr's forward chain, where the drop policy would eat it.
_ROUTER_SYSCTLS = r"""
echo 1 > /proc/sys/net/ipv4/ip_forward
for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e "$f" ] && echo 0 > "$f"; done
exec nft -f -
"""

_CRTR_RULESET = """
table ip lab {
    counter fwd_drop {}
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        counter name "fwd_drop" drop
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""

# End hosts record the source of every incoming SYN in a set, so a test can tell which port
# a connection came from (active-mode data must come from port 20) even when the listener
# is a real FTP client it cannot instrument.
_SYN_RECORDER = """
table ip labsyn {
    set seen {
        type ipv4_addr . inet_service . inet_service
        flags dynamic
        size 65535
    }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp flags & (syn | ack) == syn add @seen { ip saddr . tcp sport . tcp dport }
    }
}
"""

# Runs `argv` after bind-mounting the host's hosts file ($1) over /etc/hosts and the lab's
# resolv.conf ($2) over /etc/resolv.conf; $0 is mount's absolute path. The mounts land in
# the private mount namespace `ip netns exec` creates for each command, so the machine's
# files are untouched, and `exec` makes the PID the caller holds the real program's PID.
_WITH_HOSTS = (
    '"$0" --bind "$1" /etc/hosts'
    ' && { [ ! -e /etc/resolv.conf ] || "$0" --bind "$2" /etc/resolv.conf; }'
    ' && shift 2 && exec "$@"'
)

# Names missing from the hosts file must fail at once, not after a 5 s timeout per lookup
# towards the machine's nameserver, which is unreachable from the lab anyway (and a query
# must not go looking for it): a closed port on the namespace's own loopback refuses.
_RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"

def unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "mount"):
        if shutil.which(tool) is None:
            return f"{tool!r} not found (install iproute2 / nftables / util-linux)"
    return None


def _sh(argv: Sequence[str], *, input: str | None = None, timeout: float = 10.0) -> str:
    """Run a setup command, raising with its stderr when it fails."""
    proc = subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in a lab namespace (daemon workers, stray listeners).

    Only lab namespaces are passed here, and everything in them was started by a lab.
    Deleting a namespace that still has processes would leave it alive but nameless.
    """
    proc = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=5, check=False
    )
    for word in proc.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(word), signal.SIGKILL)


def _delete_namespaces(names: Iterable[str]) -> None:
    names = list(names)
    for ns in names:
        _kill_namespace_processes(ns)
    if names:
        # -force: keep deleting when one is already gone.
        script = "".join(f"netns delete {ns}\n" for ns in names)
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces and work dirs left by crashed labs (whose pid is gone).

    Returns the namespaces deleted. Labs of live processes (parallel runs) are left alone.
    """
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=False
    ).stdout
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    stale: list[str] = []
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            stale.append(name)
    _delete_namespaces(stale)
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        match = pattern.match(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    return stale


class Lab:
    """The running topology. Build with :meth:`create` (or use it as a context manager)."""

    def __init__(self, tag: str, workdir: Path) -> None:
        self.tag = tag
        self.workdir = workdir
        self.control_port = DEFAULT_CONTROL_PORT
        self.passive_range = DEFAULT_PASSIVE_RANGE
        self.build_seconds = 0.0
        self._helper_ports: dict[str, set[int]] = {router: set() for router in ROUTERS}
        self._procs: list[subprocess.Popen[Any]] = []

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    def create(cls, prefix: str = PREFIX) -> Lab:
        """Build the topology (removing leftovers of crashed labs first) and return it."""
        started = time.monotonic()
        cleanup_stale(prefix)
        tag = f"{prefix}{os.getpid()}"
        # A lab this process built earlier and never destroyed is ours to replace.
        _delete_namespaces(f"{tag}-{host}" for host in HOSTS)
        lab = cls(tag, Path(tempfile.mkdtemp(prefix=f"{tag}-")))
        try:
            lab._build()
        except BaseException:
            lab.destroy()
            raise
        lab.build_seconds = time.monotonic() - started
        return lab

    def _build(self) -> None:
        (self.workdir / "resolv.conf").write_text(_RESOLV_CONF)
        for host in HOSTS:
            self.hosts_file(host, {})
        # Namespaces and veth pairs in one `ip` process: each pair is created directly
        # with its ends in their namespaces, so nothing touches the root namespace.
        script = [f"netns add {self.ns(host)}" for host in HOSTS]
        script += [
            f"link add {dev} netns {self.ns(host)} type veth peer name {peer_dev} "
            f"netns {self.ns(peer)}"
            for host, dev, peer, peer_dev in _LINKS
        ]
        _sh(["ip", "-batch", "-"], input="\n".join(script) + "\n")
        # Configure the namespaces concurrently: each step is a few small processes.
        jobs: list[tuple[list[str], str]] = []
        for host in HOSTS:
            lines = ["link set lo up", *_IP_SETUP[host].split("\n")]
            batch = "\n".join(line.strip() for line in lines if line.strip()) + "\n"
            jobs.append((["ip", "-n", self.ns(host), "-batch", "-"], batch))
        self._run_parallel(jobs)
        jobs = [
            (
                ["ip", "netns", "exec", self.ns("rtr"), "sh", "-c", _ROUTER_SYSCTLS],
                self._rtr_ruleset(),
            ),
            (["ip", "netns", "exec", self.ns("crtr"), "sh", "-c", _ROUTER_SYSCTLS], _CRTR_RULESET),
        ]
        jobs += [
            (["ip", "netns", "exec", self.ns(host), "nft", "-f", "-"], _SYN_RECORDER)
            for host in END_HOSTS
        ]
        self._run_parallel(jobs)

    @staticmethod
    def _run_parallel(jobs: Sequence[tuple[list[str], str]]) -> None:
        pipe = subprocess.PIPE
        procs = [
            (argv, stdin, subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=pipe, text=True))
            for argv, stdin in jobs
        ]
        errors = []
        for argv, stdin, proc in procs:
            _, err = proc.communicate(stdin, timeout=10)
            if proc.returncode != 0:
                errors.append(f"{' '.join(argv[:5])}: {err.strip()}")
        if errors:
            raise RuntimeError("lab setup failed:\n" + "\n".join(errors))

    def destroy(self) -> None:
        """Stop every process the lab started and delete its namespaces and files."""
        self._stop_processes()
        _delete_namespaces(self.ns(host) for host in HOSTS)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def reset(self) -> None:
        """Back to the state :meth:`create` left: default forwarding, no helpers, default
        hosts files, empty SYN records and conntrack tables, processes stopped."""
        self._stop_processes()
        self.set_rtr_forward(DEFAULT_CONTROL_PORT, DEFAULT_PASSIVE_RANGE)
        for router in ROUTERS:
            if self._helper_ports[router]:
                self._helper_ports[router].clear()
                self._apply_helpers(router)
        for host in HOSTS:
            self.hosts_file(host, {})
        for host in END_HOSTS:
            self.run(host, "nft", "flush", "set", "ip", "labsyn", "seen", check=True)
        if shutil.which("conntrack"):
            # Entries from an earlier test would keep NAT decisions made under old rules.
            for router in ROUTERS:
                self.run(router, "conntrack", "-F")

    def _stop_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        self._procs.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- running things --------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace name of ``host`` (for raw ``ip netns exec``)."""
        if host not in HOSTS:
            raise ValueError(f"unknown lab host {host!r}; hosts are {', '.join(HOSTS)}")
        return f"{self.tag}-{host}"

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside ``host`` with its lab hosts file."""
        # Absolute tool paths: callers may pass an `env` whose PATH lacks /usr/sbin.
        ip, mount = shutil.which("ip") or "ip", shutil.which("mount") or "mount"
        files = [mount, str(self._hosts_path(host)), str(self.workdir / "resolv.conf")]
        return [ip, "netns", "exec", self.ns(host), "/bin/sh", "-c", _WITH_HOSTS, *files, *argv]

    def run(
        self,
        host: str,
        *argv: str,
        timeout: float = 10.0,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` to completion; text stdout/stderr captured."""
        return subprocess.run(
            self.command(host, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host`` (kwargs go to Popen). ``.pid`` is the program's
        own PID; the lab terminates it at :meth:`reset`/:meth:`destroy` if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(host, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def listen(self, host: str, ports: Iterable[int]) -> Listener:
        """Start a TCP server on ``ports`` (any address) in ``host``; see :class:`Listener`."""
        argv = [sys.executable, "-I", "-S", "-c", LISTENER_SCRIPT, *map(str, ports)]
        listener = Listener(self.popen(host, argv, stdout=subprocess.PIPE))
        listener.wait_ready()
        return listener

    def connect(
        self,
        host: str,
        address: str,
        port: int,
        *,
        timeout: float = 1.0,
        source_port: int = 0,
        send: Sequence[str] = (),
    ) -> Probe:
        """Connect from ``host`` to ``address:port`` (from ``source_port`` if nonzero), read
        the greeting, then send each item of ``send`` in its own segment, waiting for the
        :meth:`listen` server's ack in between. The conntrack FTP helper only parses a
        segment that follows a newline-terminated one, so send e.g. a USER line before PORT.
        """
        args = [address, *map(str, (port, timeout, source_port)), *send]
        argv = [sys.executable, "-I", "-S", "-c", PROBE_SCRIPT, *args]
        started = time.monotonic()
        proc = self.run(host, *argv, timeout=timeout + 10, check=True)
        result = json.loads(proc.stdout)
        return Probe(result["error"], result["reply"], time.monotonic() - started)

    # -- firewall, NAT, name resolution ----------------------------------------------

    def _rtr_ruleset(self) -> str:
        low, high = self.passive_range
        ctl = self.control_port
        # `table; delete table; table {...}` in one `nft -f` replaces the table atomically
        # (and resets its counters).
        return f"""
table ip lab
delete table ip lab
table ip lab {{
    counter in_drop {{}}
    counter fwd_drop {{}}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "pub" ip daddr {PUBLIC_IP} tcp dport {{ {ctl}, {low}-{high} }} dnat to {SRV_IP}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname != "pub" accept
        ct state established,related accept
        meta l4proto icmp accept
        counter name "in_drop" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "inside" oifname "pub" accept
        iifname "pub" ip daddr {SRV_IP} tcp dport {{ {ctl}, {low}-{high} }} ct status dnat accept
        counter name "fwd_drop" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub" ip saddr 10.200.2.0/24 masquerade
    }}
}}
"""

    def set_rtr_forward(self, control_port: int, passive_range: tuple[int, int]) -> None:
        """Make rtr DNAT/forward exactly ``control_port`` and ``passive_range`` (inclusive)
        to srv; replaces rtr's ruleset atomically, which zeroes its counters."""
        low, high = passive_range
        if not 0 < low <= high < 65536 or not 0 < control_port < 65536:
            raise ValueError(f"bad ports {control_port} {passive_range}")
        self.control_port, self.passive_range = control_port, (low, high)
        self.run("rtr", "nft", "-f", "-", input=self._rtr_ruleset(), check=True)

    def set_ct_ftp_helper(
        self, router: str = "crtr", *, port: int = 21, enabled: bool = True
    ) -> None:
        """Attach (or detach) the conntrack FTP helper on ``router`` for new connections to
        TCP ``port``. Needed since Linux 4.7, which stopped assigning helpers by port."""
        if router not in ROUTERS:
            raise ValueError(f"{router!r} is not a router ({', '.join(ROUTERS)})")
        ports = self._helper_ports[router]
        if enabled:
            ports.add(port)
        else:
            ports.discard(port)
        self._apply_helpers(router)

    def _apply_helpers(self, router: str) -> None:
        ports = sorted(self._helper_ports[router])
        script = "table ip ftphelper\ndelete table ip ftphelper\n"
        if ports:
            # Assigned in prerouting, i.e. on the connection's first packet, before conntrack
            # confirms it (too late after that); the nat helper then rewrites PORT/EPRT/227
            # for this router's own masquerade or DNAT and opens the expected data port.
            port_set = ", ".join(map(str, ports))
            script += f"""
table ip ftphelper {{
    ct helper ftp {{ type "ftp" protocol tcp; l3proto ip; }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        tcp dport {{ {port_set} }} ct state new ct helper set "ftp"
    }}
}}
"""
        self.run(router, "nft", "-f", "-", input=script, check=True)

    def _hosts_path(self, host: str) -> Path:
        return self.workdir / f"hosts.{host}"

    def hosts_file(self, host: str, mapping: Mapping[str, str]) -> Path:
        """Set the ``/etc/hosts`` that processes in ``host`` see to localhost plus
        ``mapping`` (name -> address). The file is rewritten in place, so processes already
        running (a daemon re-resolving its masquerade name) see the change on their next
        lookup; glibc rereads /etc/hosts on every call. Returns the file's path."""
        path = self._hosts_path(host)
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{address}\t{name}" for name, address in mapping.items()]
        # Truncate-and-write keeps the inode: a rename would leave the bind mounts of
        # running processes pointing at the old file.
        with path.open("w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    # -- observing -------------------------------------------------------------------

    def counter(self, host: str, name: str, table: str = "lab") -> int:
        """Packets counted so far by the named nft counter (rtr: in_drop, fwd_drop)."""
        proc = self.run(host, "nft", "-j", "list", "counter", "ip", table, name, check=True)
        for item in json.loads(proc.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise LookupError(f"no counter {name} in table ip {table} on {host}")

    def incoming_syns(self, host: str) -> set[tuple[str, int, int]]:
        """(source ip, source port, destination port) of every TCP SYN that reached an
        end host since the last :meth:`reset` — e.g. proves active-mode data came from 20."""
        proc = self.run(host, "nft", "-j", "list", "set", "ip", "labsyn", "seen", check=True)
        seen: set[tuple[str, int, int]] = set()
        for item in json.loads(proc.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                # Dynamic-set members may come wrapped as {"elem": {"val": ...}}.
                if "elem" in elem:
                    elem = elem["elem"]["val"]
                ip, sport, dport = elem["concat"]
                seen.add((ip, int(sport), int(dport)))
        return seen

    def conntrack(self, router: str) -> str:
        """``conntrack -L`` on ``router`` (needs the conntrack tool) for diagnostics."""
        return self.run(router, "conntrack", "-L", check=True).stdout
