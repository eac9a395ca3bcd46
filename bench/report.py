"""Turn the raw results into bench/RESULTS.md: figures, ratios to the best peer, targets.

`python3 -m bench.report merge-ftps DIR` merges the FTPS RETR results of a separate
`--workloads ftps` run (DIR/RESULTS.json) into bench/RESULTS.md and bench/RESULTS.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import best, ratio

SUBJECT = "ftpd"
BUSY_WARNING = 0.10
WORKLOADS = ("throughput", "sessions", "storm", "hold", "ftps")
FTPS_SECTION = "## FTPS RETR"
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
             f"{profile.get('capacity_target', 10000):,} idle sessions held with zero errors",
             FTPS_TARGET, KDF_TARGET)
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
    rows.append((names[6], *ftps_target(subject, peers)))
    rows.append((names[7], *kdf_target(subject)))
    return rows


KDF_TARGET = "one ftpd password check costs at least one SHA-512 crypt (the peers')"


def kdf_target(subject: Result) -> tuple[str, str]:
    """Wins in the login workloads must not come from a cheaper key derivation."""
    cost = subject.get("kdf")
    if not isinstance(cost, dict) or cost.get("ratio") is None:
        return NA, "not measured"
    return (PASS if cost["ratio"] >= 1 else FAIL,
            f"{cost['ftpd_scheme']}: {cost['ftpd_ms']:.1f} ms against SHA-512 crypt "
            f"(5,000 rounds): {cost['sha512_crypt_ms']:.1f} ms = {cost['ratio']:.1f}x")


# --- FTPS RETR -----------------------------------------------------------------------------

# TLS cannot use sendfile(), so there is no absolute floor: ftpd must lose no more to TLS
# (relative to the plain-TCP bare copy) than any peer that could be configured for it.
FTPS_TARGET = "FTPS RETR / paired bare copy >= every peer's (ftpd's own goal: the issue sets none)"
SKIPPED = "skipped"


def ftps_state(server: Result) -> str | None:
    """None if FTPS RETR was measured for `server`, else the text for its table cell:
    'skipped', 'n/a: why' (cannot be configured for TLS) or 'failed: why'."""
    ftps = server.get("ftps")
    if not isinstance(ftps, dict):
        return "—"
    if ftps.get("retr_mb_s") is not None:
        return None
    for key, prefix in (("na", "n/a: "), ("failed", "failed: ")):
        if ftps.get(key):
            reason = " ".join(str(ftps[key]).split()).replace("|", "/")
            return prefix + (reason if len(reason) <= 120 else reason[:117] + "...")
    return SKIPPED if "skipped" in ftps else "—"


def ftps_target(subject: Result, peers: list[Result]) -> tuple[str, str]:
    state = ftps_state(subject)
    if state is not None:
        status = {SKIPPED: SKIPPED, "—": NA}.get(state, FAIL if state.startswith("failed")
                                                   else NA)
        return status, "not measured" if state == "—" else state
    mine = _dig(subject, "ftps", "retr_ratio")
    if mine is None:
        return NA, "no ratio (bare copy missing)"
    theirs = [float(_dig(p, "ftps", "retr_ratio")) for p in peers if ftps_state(p) is None
              and _dig(p, "ftps", "retr_ratio") is not None]
    if not theirs:
        return NA, f"{mine:.3f}; no peer measured"
    return (PASS if mine >= max(theirs) else FAIL,
            f"{mine:.3f} (best peer {max(theirs):.3f})")


def _tls_text(server: Result) -> str | None:
    probe = _dig(server, "ftps", "probe")
    if not isinstance(probe, dict) or not probe.get("tls_version"):
        return None
    return f"{probe['tls_version']} {probe.get('tls_cipher') or '?'}"


def _resumed_text(server: Result) -> str | None:
    probe = _dig(server, "ftps", "probe")
    if not isinstance(probe, dict) or probe.get("handshakes") is None:
        return None
    data = int(probe["handshakes"]) - 1  # the first handshake is the control connection's
    return f"{min(int(probe.get('resumed', 0)), data)} of {data}"


def ftps_metrics() -> list[Metric]:
    return [
        Metric("FTPS RETR MB/s (curl, median)", lambda s: _dig(s, "ftps", "retr_mb_s"), True),
        Metric("  paired bare sendfile copy MB/s",
               lambda s: _dig(s, "ftps", "bare_retr_mb_s"), True, compare=False),
        Metric("  FTPS RETR / bare copy", lambda s: _dig(s, "ftps", "retr_ratio"), True, 3),
    ]


def render_ftps_section(results: Result, note: str | None = None) -> list[str]:
    """The FTPS RETR section: how it was measured, a table, the CPU check."""
    servers: dict[str, Result] = results.get("servers", {})
    profile = results.get("meta", {}).get("profile", {})
    names = list(servers)
    has_subject = SUBJECT in servers and any(n != SUBJECT for n in names)
    size = _fmt(profile.get("file_bytes", 0) / 2**20, 0)
    out = [FTPS_SECTION, ""]
    if note:
        out += [note, ""]
    if all(ftps_state(s) == SKIPPED for s in servers.values()):
        return [*out, "Not run: `ftps` was not in `--workloads`."]
    out += ["Each server runs in a start of its own, separate from the plain workloads, "
            "with TLS required for login and for every data connection and the same self-signed "
            "RSA-2048 certificate (made by the "
            "harness with `openssl req`); each server's data-connection session-reuse check, "
            "TLS versions and ciphers stay at its defaults. `curl --ssl-reqd --insecure "
            f"--output /dev/null ftp://127.0.0.1:PORT/pub/big.bin` (explicit FTPS: AUTH TLS, "
            f"PROT P) downloads the same {size} MiB file as plain RETR, "
            f"{profile.get('reps')} time(s), each followed by the same bare sendfile copy "
            "(plain TCP: the ratio is what TLS costs each server against the loopback "
            "ceiling); medians of the per-pair figures. An untimed verbose transfer of the "
            "64 KiB file first records what curl negotiated.", ""]
    header = "| metric | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    if has_subject:
        header += " ftpd / best peer |"
        rule += "---:|"
    out += [header, rule]
    states = {n: ftps_state(servers[n]) for n in names}
    for index, metric in enumerate(ftps_metrics()):
        cells = [_fmt(metric.get(servers[n]), metric.digits) if states[n] is None
                 else (str(states[n]) if index == 0 else "—") for n in names]
        line = f"| {metric.label} | " + " | ".join(cells) + " |"
        if has_subject:
            measured = {n: s for n, s in servers.items() if states[n] is None}
            rel = ratio(metric.get(servers[SUBJECT]), best_peer(measured, metric)) \
                if SUBJECT in measured else None
            line += f" {_fmt(rel, 2) if metric.compare else ''} |"
        out.append(line)
    texts: list[tuple[str, Callable[[Result], str | None]]] = [
        ("  TLS negotiated with curl", _tls_text),
        ("  data connections that resumed the session", _resumed_text)]
    for label, text in texts:
        cells = [text(servers[n]) or "—" for n in names]
        out.append(f"| {label} | " + " | ".join(cells) + " |" + (" |" if has_subject else ""))
    busy = {n: float(s["ftps"]["background_cpu_busy"]) for n, s in servers.items()
            if isinstance(s.get("ftps"), dict)
            and s["ftps"].get("background_cpu_busy") is not None}
    if busy:
        noisy = [n for n, b in busy.items() if b > BUSY_WARNING]
        out += ["", "CPU busy with other work in the 2 s before each TLS start: "
                + ", ".join(f"{n} {b:.0%}" for n, b in busy.items()) + "."
                + (f" **Above {BUSY_WARNING:.0%} for {', '.join(noisy)}.**" if noisy else "")]
    tls_notes = [(n, note_) for n, s in servers.items() if isinstance(s.get("ftps"), dict)
                 for note_ in s["ftps"].get("notes", []) if note_.startswith("TLS: ")]
    if tls_notes:
        out += ["", "TLS set-up: " + "; ".join(f"{n}: {t.removeprefix('TLS: ')}"
                                               for n, t in tls_notes) + "."]
    return out


def merge_ftps(markdown: str, ftps_results: Result, note: str) -> str:
    """RESULTS.md of a full run with the FTPS RETR section (and target row) of a separate
    `--workloads ftps` run: replaces an earlier FTPS section, the old 'skipped' rows."""
    lines = markdown.rstrip("\n").split("\n")
    if FTPS_SECTION in lines:  # drop an earlier merge
        start = lines.index(FTPS_SECTION)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines[start:end] = []
    lines = [ln for ln in lines if not ln.startswith("| FTPS RETR MB/s |")]
    servers: dict[str, Result] = ftps_results.get("servers", {})
    subject = servers.get(SUBJECT)
    if subject is not None:
        status, detail = ftps_target(subject, [s for n, s in servers.items() if n != SUBJECT])
        row = f"| {FTPS_TARGET} | {status} | {detail} (see {FTPS_SECTION[3:]}) |"
        found = [i for i, ln in enumerate(lines)
                 if ln.startswith(("| FTPS RETR throughput |", f"| {FTPS_TARGET} |"))]
        for i in found:
            lines[i] = row
        if not found and "## Targets" in lines:
            end = lines.index("## Targets") + 4  # title, blank, header, rule
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            lines.insert(end, row)
    section = render_ftps_section(ftps_results, note)
    at = lines.index("## Targets") if "## Targets" in lines else len(lines)
    lines[at:at] = [*section, ""]
    return "\n".join(lines) + "\n"


def merge_ftps_json(main: Result, ftps_results: Result, note: str) -> Result:
    """main's servers get the FTPS run's result["ftps"]; meta records where it came from."""
    merged: Result = json.loads(json.dumps(main))
    for name, server in ftps_results.get("servers", {}).items():
        merged.setdefault("servers", {}).setdefault(name, {"name": name, "errors": []})
        merged["servers"][name]["ftps"] = server.get("ftps")
        merged["servers"][name]["ftps_errors"] = server.get("errors", [])
    meta = ftps_results.get("meta", {})
    merged.setdefault("meta", {})["ftps_run"] = {
        "note": note, "command": meta.get("command"),
        "date": meta.get("machine", {}).get("date"),
        "profile": meta.get("profile", {}).get("name"), "elapsed_s": meta.get("elapsed_s"),
    }
    return merged


def ftps_note(ftps_results: Result) -> str:
    meta = ftps_results.get("meta", {})
    profile = meta.get("profile", {}).get("name", "?")
    return (f"Measured in a separate run, `{meta.get('command', 'bench/run --workloads ftps')}` "
            f"({profile} profile), on {meta.get('machine', {}).get('date', '?')}, same "
            "machine, after the run above; merged here with "
            "`python3 -m bench.report merge-ftps DIR`. Ratios are taken within that run.")


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

    workloads = meta.get("workloads") or list(WORKLOADS)
    plain = [w for w in workloads if w != "ftps"]
    out += ["", "## Results", ""] if plain else []
    header = "| metric | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    if has_subject:
        header += " ftpd / best peer |"
        rule += "---:|"
    out += [header, rule] if plain else []
    rows = metrics(list(profile.get("session_clients", [50, 200])),
                   list(profile.get("memory_steps", [0, 200, 1000])))
    for metric in rows if plain else []:
        cells = [_fmt(metric.get(servers[n]), metric.digits) for n in names]
        line = f"| {metric.label} | " + " | ".join(cells) + " |"
        if has_subject:
            rel = ratio(metric.get(servers[SUBJECT]), best_peer(servers, metric))
            line += f" {_fmt(rel, 2) if metric.compare else ''} |"
        out.append(line)
    busy: dict[str, float] = {n: float(s["background_cpu_busy"]) for n, s in servers.items()
                              if s.get("background_cpu_busy") is not None}
    if busy:
        noisy = [n for n, b in busy.items() if b > BUSY_WARNING]
        out += ["", "CPU busy with other work in the 2 s before each server started: "
                + ", ".join(f"{n} {b:.0%}" for n, b in busy.items()) + "."
                + (f" **Above {BUSY_WARNING:.0%} for {', '.join(noisy)}: other work on the "
                   "machine skewed these figures; rerun on a quiet machine.**" if noisy else "")]
    if len(workloads) < len(WORKLOADS):
        out += ["", f"Workloads run: {', '.join(workloads)} (the others were left out)."]
    out += ["", *render_ftps_section(results)]

    out += ["", "## Targets", "", "| target | status | measured |", "|---|---|---|"]
    for name, status, detail in evaluate_targets(results):
        if plain or name == FTPS_TARGET:
            out.append(f"| {name} | {status} | {detail} |")

    method = [
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
    if plain:  # an FTPS-only run: its section says how it was measured
        out += ["", "## Method", "", *method]
    errors = [(n, e) for n, s in servers.items() for e in s.get("errors", [])]
    if errors:
        out += ["", "## Errors during the run", ""]
        out += [f"- {n}: {e}" for n, e in errors]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.report")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge-ftps", help="merge a --workloads ftps run into RESULTS.*")
    merge.add_argument("source", type=Path, help="directory of the ftps run's RESULTS.json")
    merge.add_argument("--into", type=Path, default=Path(__file__).resolve().parent,
                       help="directory of the RESULTS.md/.json to update (default: bench/)")
    merge.add_argument("--note", default="", help="text added to the generated note")
    args = parser.parse_args(argv)
    ftps_results = json.loads((args.source / "RESULTS.json").read_text())
    if "ftps" not in ftps_results.get("meta", {}).get("workloads", []):
        raise SystemExit(f"{args.source}/RESULTS.json has no ftps workload")
    note = " ".join(filter(None, [ftps_note(ftps_results), args.note.strip()]))
    md, js = args.into / "RESULTS.md", args.into / "RESULTS.json"
    md.write_text(merge_ftps(md.read_text(), ftps_results, note))
    js.write_text(json.dumps(merge_ftps_json(json.loads(js.read_text()), ftps_results, note),
                             indent=2) + "\n")
    print(f"merged FTPS RETR from {args.source} into {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
