"""The [tls] rules between settings, without loading OpenSSL.

`config.load` runs these on every load; keeping them apart from `tls` means a
daemon without TLS never maps OpenSSL and cryptography (about 10 MB per
process tree), and `ftpd check` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config, Problem


def static_problems(config: Config) -> list[Problem]:
    """Rules between settings (called by config.load); the files are read by inspect()."""
    from .config import Problem

    problems: list[Problem] = []
    tls = config.tls
    if not tls.certificate:
        needs = []
        if tls.require != "none":
            needs.append(("tls.require", f'tls.require = "{tls.require}"'))
        if tls.implicit_listen:
            needs.append(("tls.implicit_listen", "implicit FTPS"))
        if tls.key:
            needs.append(("tls.key", "a key"))
        for key, what in needs:
            problems.append(Problem(config.origin(key), key,
                                    f"{what} needs a certificate: set tls.certificate"))
    if tls.min_version > tls.max_version:  # "1.2" < "1.3" as strings too
        problems.append(Problem(config.origin("tls.max_version"), "tls.max_version",
                                f"{tls.max_version} is below tls.min_version "
                                f"({tls.min_version}); raise max_version or lower min_version"))
    both = set(tls.implicit_listen) & set(config.server.listen)
    for endpoint in sorted(both, key=str):
        problems.append(Problem(
            config.origin("tls.implicit_listen"), "tls.implicit_listen",
            f"{endpoint} is also in server.listen; an address is either plain/explicit "
            "FTPS (server.listen) or implicit FTPS, not both"))
    return problems
