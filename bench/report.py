"""Turn the raw results into bench/RESULTS.md: figures, ratios to the best peer, targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.stats import best, ratio

SUBJECT = "ftpd"
BUSY_WARNING = 0.10
Result = dict[str, Any]


def _dig(data: Any, *path: str | int) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key if isinstance(key, str) else str(key))
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def hold_at(server: Result, step: int) -> Result | None:
    """The hold record for `step`, if that many sessions were actually held."""
    for record in server.get("hold") or []:
        if record.get("step") == step and record.get("held") == step:
            return dict(record)
    return None


def pss_mib(server: Result, step: int) -> float | None:
    record = hold_at(server, step)
    if record is None or record.get("server_pss_kib") is None:
        return None
    return float(record["server_pss_kib"]) / 1024


def capacity(server: Result) -> int | None:
    """Most idle sessions held at a step with no error so far (None if never measured)."""
    held = [r["step"] for r in server.get("hold") or []
            if r.get("total_errors") == 0 and r.get("held") == r.get("step")]
    return max(held) if held else None


@dataclass(frozen=True)
class Metric:
    label: str
    get: Callable[[Result], float | None]
    higher_is_better: bool
    digits: int = 1
    compare: bool = True  # False: shown for context, no ratio to the best peer


def _pss_at(step: int) -> Callable[[Result], float | None]:
    return lambda s: pss_mib(s, step)


def _capacity_value(server: Result) -> float | None:
    held = capacity(server)
    return None if held is None else float(held)


def _sessions(n: int, *path: str) -> Callable[[Result], float | None]:
    return lambda s: _dig(s, "sessions", str(n), *path)


def metrics(session_clients: list[int], memory_steps: list[int]) -> list[Metric]:
    rows = [
        Metric("RETR MB/s (curl, median)", lambda s: _dig(s, "throughput", "retr_mb_s"), True),
        Metric("  paired bare sendfile copy MB/s",
               lambda s: _dig(s, "throughput", "bare_retr_mb_s"), True, compare=False),
        Metric("  RETR / bare copy", lambda s: _dig(s, "throughput", "retr_ratio"), True, 3),
        Metric("STOR MB/s (curl, median)", lambda s: _dig(s, "throughput", "stor_mb_s"), True),
        Metric("  paired bare recv+write copy MB/s",
               lambda s: _dig(s, "throughput", "bare_stor_mb_s"), True, compare=False),
        Metric("  STOR / bare copy", lambda s: _dig(s, "throughput", "stor_ratio"), True, 3),
    ]
    for n in session_clients:
        rows += [
            Metric(f"sessions/s, N={n}", _sessions(n, "sessions_per_s"), True),
            Metric(f"  login p50 ms, N={n}", _sessions(n, "login", "p50_ms"), False),
            Metric(f"  login p99 ms, N={n}", _sessions(n, "login", "p99_ms"), False),
            Metric(f"  session p50 ms, N={n}", _sessions(n, "session", "p50_ms"), False),
            Metric(f"  session p99 ms, N={n}", _sessions(n, "session", "p99_ms"), False),
            Metric(f"  errors, N={n}", _sessions(n, "errors"), False, 0),
            Metric(f"  loadgen CPU share, N={n}", _sessions(n, "loadgen_cpu_share"), False, 2,
                   compare=False),
            Metric(f"  machine CPU busy, N={n}", _sessions(n, "machine_cpu_busy"), False, 2,
                   compare=False),
        ]
    rows += [
        Metric("login storm: all logged in, s", lambda s: _dig(s, "storm", "all_logged_in_s"),
               False, 3),
        Metric("  login p99 ms", lambda s: _dig(s, "storm", "login", "p99_ms"), False),
        Metric("  retries", lambda s: _dig(s, "storm", "retries"), False, 0),
        Metric("  errors", lambda s: _dig(s, "storm", "errors"), False, 0),
    ]
    rows += [Metric(f"PSS MiB, {step} idle sessions", _pss_at(step), False)
             for step in memory_steps]
    rows.append(Metric("idle sessions held, zero errors", _capacity_value, True, 0))
    return rows


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def best_peer(servers: dict[str, Result], metric: Metric) -> float | None:
    return best((metric.get(s) for name, s in servers.items() if name != SUBJECT),
                metric.higher_is_better)


# --- targets -------------------------------------------------------------------------------

PASS, FAIL, NA = "PASS", "FAIL", "n/a"


def _ratio_target(subject: Result, peers: list[Result], key: str) -> tuple[str, str]:
    mine = _dig(subject, "throughput", key)
    theirs = [v for v in (_dig(p, "throughput", key) for p in peers) if v is not None]
    if mine is None:
        return NA, "not measured"
    ok = mine >= 0.95 and all(mine >= v for v in theirs)
    best_peer_value = max(theirs) if theirs else None
    return (PASS if ok else FAIL,
            f"{mine:.3f} (best peer {_fmt(best_peer_value, 3)})")


def evaluate_targets(results: Result) -> list[tuple[str, str, str]]:
    """(target, status, detail) rows, all ratios taken within this run."""
    servers: dict[str, Result] = results.get("servers", {})
    profile = results.get("meta", {}).get("profile", {})
    subject = servers.get(SUBJECT)
    peers = [s for n, s in servers.items() if n != SUBJECT]
    rows: list[tuple[str, str, str]] = []
    names = ("RETR / paired bare copy >= 0.95 and >= every peer's",
             "STOR / paired bare copy >= 0.95 and >= every peer's",
             "sessions/s at N=200 >= 1.5x best peer",
             "login storm: all logged in sooner than every peer",
             "PSS at 1,000 idle sessions <= 0.1x best peer",
             f"{profile.get('capacity_target', 10000):,} idle sessions held with zero errors")
    if subject is None:
        return [(name, NA, "ftpd not run") for name in names]
    rows.append((names[0], *_ratio_target(subject, peers, "retr_ratio")))
    rows.append((names[1], *_ratio_target(subject, peers, "stor_ratio")))

    mine = _dig(subject, "sessions", "200", "sessions_per_s")
    top = best((_dig(p, "sessions", "200", "sessions_per_s") for p in peers), True)
    if mine is None or top is None:
        rows.append((names[2], NA, "not measured"))
    else:
        rows.append((names[2], PASS if mine >= 1.5 * top else FAIL,
                     f"{mine:.1f}/s = {mine / top:.2f}x best peer ({top:.1f}/s)"))

    mine = _dig(subject, "storm", "all_logged_in_s")
    theirs = [_dig(p, "storm", "all_logged_in_s") for p in peers]
    if mine is None:
        rows.append((names[3], FAIL if subject.get("storm") else NA,
                     "not everyone logged in" if subject.get("storm") else "not measured"))
    else:
        # A peer that never got everyone in counts as slower.
        ok = all(v is None or mine < v for v in theirs)
        fastest = best(theirs, False)
        rows.append((names[3], PASS if ok else FAIL,
                     f"{mine:.3f} s (fastest peer {_fmt(fastest, 3)} s)"))

    mine_pss = pss_mib(subject, 1000)
    top_pss = best((pss_mib(p, 1000) for p in peers), False)
    if mine_pss is None or top_pss is None:
        rows.append((names[4], NA, "not measured"))
    else:
        rows.append((names[4], PASS if mine_pss <= 0.1 * top_pss else FAIL,
                     f"{mine_pss:.1f} MiB = {mine_pss / top_pss:.3f}x best peer "
                     f"({top_pss:.1f} MiB)"))

    target = int(profile.get("capacity_target", 10000))
    steps = list(profile.get("memory_steps", [])) + list(profile.get("capacity_steps", []))
    held = capacity(subject)
    if not steps or max(steps) < target:
        rows.append((names[5], NA, f"not measured in the {profile.get('name')} profile "
                                   f"(held {_fmt(held, 0)})"))
    else:
        rows.append((names[5], PASS if held is not None and held >= target else FAIL,
                     f"held {_fmt(held, 0)}"))
    return rows


# --- rendering -----------------------------------------------------------------------------

def render(results: Result) -> str:
    meta = results.get("meta", {})
    profile = meta.get("profile", {})
    servers: dict[str, Result] = results.get("servers", {})
    names = list(servers)
    has_subject = SUBJECT in servers and any(n != SUBJECT for n in names)
    out: list[str] = ["# ftpd benchmarks: side by side with vsftpd, ProFTPD and Pure-FTPd", ""]
    if profile.get("name") != "full":
        out += [f"**{profile.get('name', '?')} run: a smoke test, not a result.** "
                "Only `bench/run` without `--quick` produces comparable figures.", ""]
    out += ["Generated by `bench/run`; raw data in `RESULTS.json`. Every figure comes from "
            "one run on one machine, servers one at a time on loopback; ratios are taken "
            "within the run.", "", "## Machine", "", "| | |", "|---|---|"]
    for key, value in meta.get("machine", {}).items():
        out.append(f"| {key} | {value} |")
    out.append(f"| run time | {_fmt(meta.get('elapsed_s'), 0)} s ({profile.get('name')}) |")
    out += ["", "## Servers", "", "| server | version | set-up |", "|---|---|---|"]
    for name, server in servers.items():
        notes = "; ".join(server.get("notes", []))
        out.append(f"| {name} | {server.get('version', '—')} | {notes} |")

    out += ["", "## Results", ""]
    header = "| metric | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    if has_subject:
        header += " ftpd / best peer |"
        rule += "---:|"
    out += [header, rule]
    rows = metrics(list(profile.get("session_clients", [50, 200])),
                   list(profile.get("memory_steps", [0, 200, 1000])))
    for metric in rows:
        cells = [_fmt(metric.get(servers[n]), metric.digits) for n in names]
        line = f"| {metric.label} | " + " | ".join(cells) + " |"
        if has_subject:
            rel = ratio(metric.get(servers[SUBJECT]), best_peer(servers, metric))
            line += f" {_fmt(rel, 2) if metric.compare else ''} |"
        out.append(line)
    out.append("| FTPS RETR MB/s | " + " | ".join("skipped" for _ in names) + " |"
               + (" |" if has_subject else ""))
    busy: dict[str, float] = {n: float(s["background_cpu_busy"]) for n, s in servers.items()
                              if s.get("background_cpu_busy") is not None}
    if busy:
        noisy = [n for n, b in busy.items() if b > BUSY_WARNING]
        out += ["", "CPU busy with other work in the 2 s before each server started: "
                + ", ".join(f"{n} {b:.0%}" for n, b in busy.items()) + "."
                + (f" **Above {BUSY_WARNING:.0%} for {', '.join(noisy)}: other work on the "
                   "machine skewed these figures; rerun on a quiet machine.**" if noisy else "")]
    workloads = meta.get("workloads")
    if workloads and len(workloads) < 4:
        out += ["", f"Workloads run: {', '.join(workloads)} (the others were left out)."]

    out += ["", "## Targets", "", "| target | status | measured |", "|---|---|---|"]
    for name, status, detail in evaluate_targets(results):
        out.append(f"| {name} | {status} | {detail} |")
    out.append("| FTPS RETR throughput | skipped | ftpd has no TLS yet (issue pending); see "
               "FTPS HOOK in bench/throughput.py |")

    out += ["", "## Method", "",
            f"- Throughput: curl downloads a {_fmt(profile.get('file_bytes', 0) / 2**20, 0)} MiB "
            f"file to /dev/null and uploads it, {profile.get('reps')} time(s) each; after every "
            "timed transfer the same curl fetches the same file from a bare server that "
            "sendfile()s it (uploads: recv() and write() to the same disk). Rates count the "
            "data phase (curl time_total - time_pretransfer); the ratio is per pair and the "
            "median is reported.",
            f"- Session rate: N clients loop login, EPSV+LIST, EPSV+RETR 64 KiB, QUIT for "
            f"{profile.get('session_duration_s')} s after a {profile.get('session_warmup_s')} s "
            "warm-up; a session counts if it ends inside the window. Latencies are nearest-rank "
            "percentiles. A failed session is counted and the client starts over after 50 ms.",
            f"- Login storm: {profile.get('storm_clients')} clients connect and log in at once; "
            f"retry policy: {meta.get('retry_policy', '—')}.",
            "- Memory: PSS summed over the server's whole process tree "
            "(/proc/PID/smaps_rollup) with that many logged-in idle sessions; the same run "
            f"then steps on to {profile.get('capacity_target', 10000):,} sessions "
            f"({profile.get('hold_concurrency')} logins in flight, a NOOP to every session "
            "after each step) and stops at the first error.",
            "- The load generator is one asyncio process; its CPU share (1.0 = one core) is "
            "reported so a generator-bound figure can be told apart."]
    errors = [(n, e) for n, s in servers.items() for e in s.get("errors", [])]
    if errors:
        out += ["", "## Errors during the run", ""]
        out += [f"- {n}: {e}" for n, e in errors]
    return "\n".join(out) + "\n"
