"""Command line: `ftpd serve | check | passwd | defaults`, `ftpd --version`."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

from . import __version__
from . import config as config_mod
from . import users as users_mod

EX_CONFIG = 78  # sysexits.h; the unit lists it in RestartPreventExitStatus=


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("FTPD_CONFIG") or config_mod.DEFAULT_PATH


def cmd_serve(args: argparse.Namespace) -> int:
    from . import logging as ftpd_logging

    if not config_mod.mentions_tls(_config_path(args)):
        # pyftpdlib imports OpenSSL (and cryptography) whenever installed:
        # ~10 MB in every process of a daemon that has no use for it.
        sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
    from .app import FtpApp
    from .privileges import BindError, StartupError, raise_open_files_limit
    from .supervisor import Supervisor

    ftpd_logging.setup("info")
    app = FtpApp(_config_path(args))
    try:
        plan = app.load()
        listeners = app.bind(plan, list(plan.endpoints))
    except (config_mod.ConfigError, StartupError) as err:
        for line in str(err).splitlines():
            logging.getLogger("ftpd").error("%s", line)
        return 1 if isinstance(err, BindError) else EX_CONFIG
    raise_open_files_limit()
    return Supervisor(app, plan, listeners).run()


def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    problems: list[str] = []
    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as err:
        problems = [str(p) for p in err.problems]
        config = None
    if config is not None:
        try:
            users_mod.load(config.users.file)
        except users_mod.UsersError as err:
            problems += [str(p) for p in err.problems]
        from .tls import inspect as inspect_tls  # reads the certificate and key

        tls_check = inspect_tls(config)
        problems += [str(p) for p in tls_check.problems]
        for warning in [*config_mod.warnings(config, probe_ports=True), *tls_check.warnings]:
            print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"ftpd: {path}: {len(problems)} error(s); the configuration was NOT accepted",
              file=sys.stderr)
        return 1
    print(f"ftpd: {path}: configuration OK")
    return 0


def cmd_firewall(args: argparse.Namespace) -> int:
    from .firewall import render

    path = _config_path(args)
    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    sys.stdout.write(render(config, args.format, path))
    return 0


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise SystemExit("ftpd passwd: the passwords differ; nothing changed")
    return first


def cmd_passwd(args: argparse.Namespace) -> int:
    from .auth import hash_password

    if not users_mod.valid_name(args.name):
        print(f"ftpd passwd: invalid user name {args.name!r}; allowed: "
              f"{users_mod.NAME_PATTERN}", file=sys.stderr)
        return 2
    if args.permissions is not None and (why := users_mod.check_permissions(args.permissions)):
        print(f"ftpd passwd: --permissions: {why}", file=sys.stderr)
        return 2
    exists = False
    if os.path.exists(args.file):
        try:
            exists = args.name in users_mod.load(args.file, check_roots=False)
        except users_mod.UsersError as err:
            print(f"ftpd passwd: cannot update {args.file}:\n{err}", file=sys.stderr)
            return 1
    if not exists and args.root is None:
        print(f"ftpd passwd: {args.name!r} is a new user: --root DIR is required",
              file=sys.stderr)
        return 2
    password = _read_password()
    if not password:
        print("ftpd passwd: empty password refused; nothing changed", file=sys.stderr)
        return 2
    users_mod.upsert(args.file, args.name, hash_password(password), args.root, args.permissions)
    print(f"ftpd passwd: {'updated' if exists else 'created'} user {args.name!r} in {args.file}")
    return 0


def cmd_defaults(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.render_default())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftpd", description="FTP daemon")
    p.add_argument("--version", action="version", version=f"ftpd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("serve", "run the daemon in the foreground"),
                           ("check", "validate the configuration and users file")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("-c", "--config", help=f"config file (default $FTPD_CONFIG or "
                                               f"{config_mod.DEFAULT_PATH})")
    sp = sub.add_parser("passwd", help="create or update a virtual user")
    sp.add_argument("-f", "--file", required=True, help="users file")
    sp.add_argument("name")
    sp.add_argument("--root", help="the user's root directory (required for a new user)")
    sp.add_argument("--permissions", help="permission letters, e.g. elr (read-only) or "
                                          f"{users_mod.PERMISSION_LETTERS} (all)")
    sub.add_parser("defaults", help="print the commented default configuration")
    sp = sub.add_parser("firewall", help="print the firewall rules this configuration needs")
    sp.add_argument("-c", "--config", help=f"config file (default $FTPD_CONFIG or "
                                           f"{config_mod.DEFAULT_PATH})")
    sp.add_argument("--format", choices=("nft", "iptables", "firewalld"), default="nft",
                    help="rule syntax (default nft)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "check": cmd_check, "passwd": cmd_passwd,
                "defaults": cmd_defaults, "firewall": cmd_firewall}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
