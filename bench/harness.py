"""bench/run: ftpd side by side with vsftpd, ProFTPD and Pure-FTPd on this machine's loopback.

One server at a time: start it, run every workload against it, stop it by PID; for the
FTPS workload start it once more with TLS required, time FTPS RETR, stop it. Cleanup
(servers, load generators, the temporary user and its files) runs on normal exit, on
errors and on SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import debs, kdf, report, servers, system, throughput, tls
from bench.guard import NotLoopbackError, require_loopback
from bench.loadgen import DEFAULT_POLICY
from bench.profiles import PROFILES, Profile
from bench.stats import aggregate_storms

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
ALL_SERVERS = ["ftpd", "vsftpd", "proftpd", "pure-ftpd"]
WORKLOADS = list(report.WORKLOADS)  # throughput, sessions, storm, hold, ftps
PEERS = ALL_SERVERS[1:]
LOADGEN_SLACK_S = 180.0  # on top of a workload's own duration before the loadgen is killed
HOLD_STEP_TIMEOUT_S = 900.0
BUSY_WARNING = 0.10  # CPU share used by others before a server starts that taints a run


class Interrupted(BaseException):
    """A termination signal arrived; unwinds through every finally block."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    previous = {s: signal.signal(s, _raise_interrupted)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s in previous:  # cleanup below must not be cut short by a second signal
            signal.signal(s, signal.SIG_IGN)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Children:
    """Processes the harness started; whatever is left is ended by PID at cleanup."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[servers.RunningServer] = []

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for srv in self.servers:
            try:
                srv.stop()
            except Exception as exc:
                log(f"stopping {srv.plan.name} (pid {srv.pid}): {exc}")
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


class Loadgen:
    """Runs bench/loadgen.py as its own process (its CPU share is then its own)."""

    def __init__(self, children: Children, host: str, port: int, user: system.BenchUser) -> None:
        self.children = children
        self.base = [sys.executable, "-m", "bench.loadgen"]
        self.common = ["--host", host, "--port", str(port), "--user", user.name,
                       "--path", f"pub/{user.small_file.name}",
                       "--size", str(system.SMALL_FILE_SIZE)]
        self.env = dict(os.environ, FTPBENCH_PASSWORD=user.password,
                        PYTHONPATH=str(REPO_ROOT))

    def run(self, command: str, args: list[str], budget_s: float) -> dict[str, Any]:
        proc = self.children.popen([*self.base, command, *self.common, *args],
                                   env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            out, err = proc.communicate(timeout=budget_s + LOADGEN_SLACK_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(
                f"loadgen {command} overran {budget_s + LOADGEN_SLACK_S:.0f} s") from None
        lines = out.decode().strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"loadgen {command} failed: {err.decode()[-800:]}")
        return dict(json.loads(lines[-1]))

    def hold(self, steps: list[int], concurrency: int, server: servers.RunningServer,
             target: int) -> list[dict[str, Any]]:
        """Step up idle sessions; PSS of the server's tree is read at every step."""
        errlog = (server.log_path.parent / "loadgen-hold.err").open("wb")
        proc = self.children.popen(
            [*self.base, "hold", *self.common, "--steps", ",".join(map(str, steps)),
             "--concurrency", str(concurrency)],
            env=self.env, stdout=subprocess.PIPE, stderr=errlog, stdin=subprocess.PIPE)
        errlog.close()
        assert proc.stdout is not None and proc.stdin is not None
        lines: queue.Queue[bytes] = queue.Queue()
        def pump() -> None:
            for line in proc.stdout or []:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()

        def next_record() -> dict[str, Any]:
            deadline = time.monotonic() + HOLD_STEP_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    return dict(json.loads(lines.get(timeout=1.0)))
                except queue.Empty:
                    if proc.poll() is not None and lines.empty():
                        tail = (server.log_path.parent / "loadgen-hold.err").read_text(
                            errors="replace")[-800:]
                        raise RuntimeError(f"loadgen hold exited ({proc.returncode}): "
                                           f"{tail}") from None
            raise RuntimeError("hold step overran its time")

        records: list[dict[str, Any]] = []
        try:
            for _ in steps:
                record = next_record()
                server.remember_tree()
                pss, count = system.tree_pss_kib(server.pid)
                record.update(server_pss_kib=pss, server_processes=count)
                records.append(record)
                log(f"  {record['held']} idle sessions, PSS {pss / 1024:.1f} MiB in {count} "
                    f"processes, errors {record['total_errors']}")
                go_on = record["total_errors"] == 0 and record["held"] < target
                proc.stdin.write(b"next\n" if go_on else b"stop\n")
                proc.stdin.flush()
                if not go_on:
                    break
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return records


def _start(name: str, plan: servers.Plan, ctx: servers.Context, children: Children,
           record: dict[str, Any]) -> servers.RunningServer:
    """Check the port and how busy the machine is, then start `plan`."""
    if not servers.port_is_free(ctx.host, ctx.port):
        raise RuntimeError(f"{ctx.host}:{ctx.port} is already in use")
    background = system.cpu_busy_over(2.0)
    record["background_cpu_busy"] = round(background, 3)
    if background > BUSY_WARNING:
        log(f"warning: the machine is {background:.0%} busy before {name} starts: other work "
            "will skew the figures")
    log(f"{name} {plan.version}: starting on {ctx.host}:{ctx.port}"
        + (" with TLS" if ctx.tls else ""))
    server = servers.RunningServer(plan, ctx.workdir)
    children.servers.append(server)
    return server


def _stop(name: str, server: servers.RunningServer, children: Children) -> None:
    log(f"{name}: stopping pid {server.pid}")
    server.stop()
    children.servers.remove(server)


def _step(name: str, server: servers.RunningServer, errors: list[str], label: str,
          func: Any) -> Any:
    """Run one workload; a failure is recorded in `errors` and gives None."""
    log(f"{name}: {label}")
    try:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({server.proc.returncode}): "
                               f"{server.log_tail(500)}")
        return func()
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        errors.append(f"{label}: {exc}")
        log(f"{name}: {label} failed: {exc}")
        return None
    finally:
        time.sleep(1.0)  # let TIME_WAIT and exiting session processes settle


def bench_one(name: str, ctx: servers.Context, profile: Profile, children: Children,
              workloads: list[str], tls_files: tls.TlsFiles | None = None) -> dict[str, Any]:
    """The plain workloads on one start of the server, then FTPS on a second start."""
    result: dict[str, Any] = {"name": name, "errors": []}
    if any(w != "ftps" for w in workloads):
        bench_plain(name, ctx, profile, children, workloads, result)
    if "ftps" not in workloads:
        result["ftps"] = {"skipped": "not in --workloads"}
    elif tls_files is None:
        result["ftps"] = {"na": "no certificate"}
    else:
        result["ftps"] = bench_ftps(name, ctx, profile, children, tls_files, result)
    return result


def bench_plain(name: str, ctx: servers.Context, profile: Profile, children: Children,
                workloads: list[str], result: dict[str, Any]) -> None:
    plan = servers.PLANS[name](ctx)
    result.update(version=plan.version, notes=plan.notes, command=" ".join(plan.argv))
    if name == report.SUBJECT:  # before the server runs, so nothing else competes for the CPU
        try:
            result["kdf"] = kdf.compare(ctx.workdir / servers.FTPD_USERS_FILE,
                                        ctx.user.password)
        except (RuntimeError, OSError, ValueError) as exc:
            result["errors"].append(f"password check cost: {exc}")
    server = _start(name, plan, ctx, children, result)
    try:
        result["banner"] = server.wait_ready(ctx.host, ctx.port).strip().splitlines()[-1]
        loadgen = Loadgen(children, ctx.host, ctx.port, ctx.user)

        def step(label: str, func: Any) -> Any:
            return _step(name, server, result["errors"], label, func)

        if "throughput" in workloads:
            result["throughput"] = step("throughput", lambda: throughput.measure(
                ctx.host, ctx.port, ctx.user, profile.reps))
        result["sessions"] = {}
        for clients in profile.session_clients if "sessions" in workloads else ():
            def sessions(clients: int = clients) -> dict[str, Any]:
                busy0 = system.cpu_busy_sample()
                rec = loadgen.run("sessions", [
                    "--clients", str(clients), "--duration", str(profile.session_duration_s),
                    "--warmup", str(profile.session_warmup_s)],
                    profile.session_duration_s + profile.session_warmup_s)
                busy1 = system.cpu_busy_sample()
                rec["machine_cpu_busy"] = round(
                    (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3)
                return rec
            result["sessions"][str(clients)] = step(f"sessions N={clients}", sessions)
        if "storm" in workloads:
            storms = [step(f"login storm {i + 1}/{profile.storm_reps}", lambda: loadgen.run(
                "storm", ["--clients", str(profile.storm_clients)], 120.0))
                for i in range(profile.storm_reps)]
            result["storm"] = aggregate_storms([r for r in storms if r is not None])
        if "hold" in workloads:
            result["hold"] = step("idle sessions (memory, capacity)", lambda: loadgen.hold(
                profile.hold_steps(), profile.hold_concurrency, server,
                profile.capacity_target))
    finally:
        _stop(name, server, children)
        if result["errors"]:  # the work directory is removed at the end: keep the evidence
            result["server_log_tail"] = server.log_tail(3000)


def bench_ftps(name: str, ctx: servers.Context, profile: Profile, children: Children,
               tls_files: tls.TlsFiles, result: dict[str, Any]) -> dict[str, Any]:
    """Start the server again with TLS required (own work directory) and time FTPS RETR.

    Gives the measurement, {"na": reason} if the server cannot be configured for TLS, or
    {"failed": reason} (also in result["errors"]) if it could not be measured."""
    workdir = ctx.workdir / "ftps"
    workdir.mkdir(mode=0o755, exist_ok=True)
    tctx = dataclasses.replace(ctx, workdir=workdir, tls=tls_files)
    try:
        plan = servers.PLANS[name](tctx)
    except servers.TlsUnsupported as exc:
        log(f"{name}: FTPS n/a: {exc}")
        return {"na": str(exc)}
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result["errors"].append(f"FTPS set-up: {exc}")
        log(f"{name}: FTPS set-up failed: {exc}")
        return {"failed": f"set-up: {exc}"}
    record: dict[str, Any] = {"notes": plan.notes, "command": " ".join(plan.argv)}
    result.setdefault("version", plan.version)
    result.setdefault("notes", [n for n in plan.notes if not n.startswith("TLS: ")])
    errors: list[str] = []
    server: servers.RunningServer | None = None
    try:
        server = _start(name, plan, tctx, children, record)
        record["banner"] = server.wait_ready(ctx.host, ctx.port).strip().splitlines()[-1]
        measured = _step(name, server, errors, "FTPS RETR", lambda: throughput.measure_ftps(
            ctx.host, ctx.port, ctx.user, profile.reps))
        if measured is not None:
            record.update(measured)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        errors.append(f"FTPS RETR: {exc}")
        log(f"{name}: FTPS: {exc}")
    finally:
        if server is not None:
            _stop(name, server, children)
            if errors:
                record["server_log_tail"] = server.log_tail(3000)
                for extra in sorted(workdir.glob("*.log")):  # e.g. ProFTPD's TLSLog
                    record.setdefault("log_tails", {})[extra.name] = extra.read_text(
                        errors="replace")[-2000:]
    if errors:
        result["errors"] += errors
        record["failed"] = errors[0].removeprefix("FTPS RETR: ")
    return record


def warn_foreign_servers() -> list[str]:
    """Peer daemons already running (e.g. a system service) would skew the numbers."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue
        if comm in {"vsftpd", "proftpd", "pure-ftpd"}:
            found.append(f"{comm} (pid {entry.name})")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~3 min for all four): 256 MiB file, short workloads, "
                             "no capacity steps; written to bench/.cache/quick/")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS),
                        help=f"comma-separated subset of {','.join(ALL_SERVERS)}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)} (ftps: "
                             "RETR over explicit FTPS, each server started again with TLS)")
    parser.add_argument("--ftpd", help="path of the ftpd console script (default: on PATH)")
    parser.add_argument("--reps", type=int,
                        help="timed RETR/STOR (and FTPS RETR) pairs per server "
                             "(default: 7, quick: 1)")
    parser.add_argument("--ftpd-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra ftpd setting, VALUE in TOML syntax (repeatable), "
                             "e.g. users.auth_cache_seconds=0")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to use")
    parser.add_argument("--base-port", type=int, default=21210,
                        help="control port of the first server; the others follow")
    parser.add_argument("--pasv", default="22000-31999", help="passive port range")
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache",
                        help="where peer packages are downloaded and unpacked")
    parser.add_argument("--out", type=Path,
                        help="directory for RESULTS.md and RESULTS.json "
                             "(default: bench/, or bench/.cache/quick with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        host = require_loopback(args.host)
    except NotLoopbackError as exc:
        raise SystemExit(str(exc)) from None
    if ":" in host:
        raise SystemExit("the peers are configured for IPv4: use a 127.0.0.0/8 address")
    if os.geteuid() != 0:
        raise SystemExit("bench/run needs root (test user, chroot, privilege drop)")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = set(names) - set(ALL_SERVERS)
    if unknown or not names:
        raise SystemExit(f"unknown servers: {sorted(unknown)}; choose from {ALL_SERVERS}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not workloads or set(workloads) - set(WORKLOADS):
        raise SystemExit(f"--workloads: choose from {WORKLOADS}")
    ftpd_bin = servers.find_ftpd(args.ftpd) if "ftpd" in names else None
    if "ftpd" in names and not ftpd_bin:
        raise SystemExit("ftpd is not installed: pip install -e . (or --ftpd PATH, or "
                         "--servers without ftpd)")
    low, _, high = args.pasv.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) <= 65535):
        raise SystemExit("--pasv wants FIRST-LAST within 1024-65535")
    pasv = (int(low), int(high))
    profile = PROFILES["quick" if args.quick else "full"]
    if args.reps is not None:
        if not 1 <= args.reps <= 50:
            raise SystemExit("--reps must be between 1 and 50")
        profile = dataclasses.replace(profile, reps=args.reps)
    try:
        overrides = servers.parse_overrides(args.ftpd_set)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    out = args.out or (args.cache / "quick" if args.quick else BENCH_DIR)
    foreign = warn_foreign_servers()
    if foreign:
        log(f"warning: peer daemons already running: {', '.join(foreign)}")

    children = Children()
    user: system.BenchUser | None = None
    workroot: Path | None = None
    results: dict[str, Any] = {"servers": {}}
    started = time.monotonic()
    try:
        with signals_raise():
            peers = [n for n in names if n in PEERS]
            packages = [p for n in peers for p in servers.PEER_PACKAGES[n]]
            unpacked = debs.ensure(packages, args.cache) if packages else None
            tls_packages = [p for n in peers for p in servers.PEER_TLS_PACKAGES.get(n, [])]
            if unpacked is not None and tls_packages and "ftps" in workloads:
                try:  # without them that peer's FTPS cell says n/a and why
                    unpacked.versions.update(debs.ensure(tls_packages, args.cache).versions)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    log(f"warning: {', '.join(tls_packages)} not unpacked: {exc}")
            if unpacked is not None:
                for peer, binary in (("vsftpd", "usr/sbin/vsftpd"),
                                     ("proftpd", "usr/sbin/proftpd"),
                                     ("pure-ftpd", "usr/sbin/pure-ftpd")):
                    if peer in peers:
                        missing = debs.check_links(unpacked.binary(binary),
                                                   unpacked.library_path())
                        if missing:
                            raise RuntimeError(f"{peer} lacks libraries: {missing}")
            user = system.create_user()
            log(f"user {user.name} (uid {user.uid}), home {user.home}; writing "
                f"{profile.file_bytes // 2**20} MiB test file")
            system.write_big_file(user.big_file, profile.file_bytes)
            workroot = Path(tempfile.mkdtemp(prefix="ftpbench-run-"))
            workroot.chmod(0o755)
            tls_files = (tls.make_certificate(workroot / "tls", host)
                         if "ftps" in workloads else None)
            results["meta"] = {
                "machine": system.machine_facts(),
                "profile": profile.as_dict(),
                "host": host,
                "passive_ports": args.pasv,
                "home": str(user.home),
                "foreign_servers": foreign,
                "retry_policy": DEFAULT_POLICY.describe(),
                "workloads": workloads,
                "command": " ".join(["bench/run", *(sys.argv[1:] if argv is None else argv)]),
            }
            for index, name in enumerate(names):
                workdir = workroot / name
                workdir.mkdir(mode=0o755)
                ctx = servers.Context(workdir, host, args.base_port + index, pasv, user,
                                      unpacked, ftpd_bin, overrides)
                try:
                    results["servers"][name] = bench_one(name, ctx, profile, children,
                                                         workloads, tls_files)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    log(f"{name}: {exc}")
                    results["servers"][name] = {"name": name, "errors": [str(exc)]}
            results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
            out.mkdir(parents=True, exist_ok=True)
            (out / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
            (out / "RESULTS.md").write_text(report.render(results))
            log(f"wrote {out / 'RESULTS.md'} and RESULTS.json in "
                f"{results['meta']['elapsed_s']:.0f} s")
    except Interrupted as exc:
        log(f"interrupted by {exc}; cleaning up")
        return 130
    finally:
        children.cleanup()
        if user is not None:
            problem = system.remove_user(user)
            if problem:
                log(f"warning: {problem}")
        if workroot is not None:
            subprocess.run(["rm", "-rf", "--one-file-system", str(workroot)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
