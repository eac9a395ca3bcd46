"""Load, merge and validate the TOML configuration; render the default file.

The main file is read first, then every `conf.d/*.toml` beside it in lexical
order; a later file overrides single keys of an earlier one. Every problem is
collected (not just the first) and names the file, the key, what is wrong and
what is allowed, like `nginx -t`.
"""

from __future__ import annotations

import glob
import json
import os
import tomllib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from .settings import BY_KEY, SECTIONS, SETTINGS, Invalid, Setting

DEFAULT_PATH = "/etc/ftpd/ftpd.toml"


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class Config:
    """Validated settings, read as `config.server.listen`."""

    path: str
    origins: dict[str, str] = field(default_factory=dict)
    sections: dict[str, SimpleNamespace] = field(default_factory=dict)

    def __getattr__(self, name: str) -> SimpleNamespace:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def origin(self, key: str) -> str:
        """The file a key was set in (the main file for defaults)."""
        return self.origins.get(key, self.path)


def config_files(path: str) -> list[str]:
    """The main file followed by its conf.d drop-ins in lexical order."""
    dropins = sorted(glob.glob(os.path.join(os.path.dirname(path) or ".", "conf.d", "*.toml")))
    return [path, *dropins]


def _read_toml(path: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problems.append(Problem(path, "", "file not found"))
    except PermissionError:
        problems.append(Problem(path, "", "permission denied reading the file"))
    except IsADirectoryError:
        problems.append(Problem(path, "", "is a directory, expected a TOML file"))
    except tomllib.TOMLDecodeError as err:
        problems.append(Problem(path, "", f"not valid TOML: {err}"))
    except UnicodeDecodeError:
        problems.append(Problem(path, "", "not valid UTF-8"))
    return None


def _merge(path: str, data: dict[str, Any], raw: dict[str, tuple[Any, str]],
           problems: list[Problem]) -> None:
    for section, table in data.items():
        if section not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            problems.append(Problem(path, section, f"unknown section; known sections: {known}"))
            continue
        if not isinstance(table, dict):
            problems.append(Problem(path, section, f"must be a table [{section}], not a value"))
            continue
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in BY_KEY:
                known = ", ".join(s.name for s in SETTINGS if s.section == section)
                problems.append(Problem(path, key, f"unknown key; [{section}] knows: {known}"))
                continue
            raw[key] = (value, path)


def mentions_tls(path: str) -> bool:
    """Whether the files set tls.certificate (a cheap peek, before any import of OpenSSL).

    Unreadable files count as yes: the real load reports them.
    """
    for file in config_files(path):
        data = _read_toml(file, [])
        if data is None:
            return True
        tls = data.get("tls")
        if isinstance(tls, dict) and tls.get("certificate"):
            return True
    return False


def load(path: str) -> Config:
    """Read and validate the configuration at `path` and its conf.d; raise ConfigError."""
    problems: list[Problem] = []
    raw: dict[str, tuple[Any, str]] = {}
    for file in config_files(path):
        data = _read_toml(file, problems)
        if data is not None:
            _merge(file, data, raw, problems)

    config = Config(path=path)
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for setting in SETTINGS:
        value, origin = raw.get(setting.key, (setting.default, path))
        config.origins[setting.key] = origin
        try:
            values[setting.section][setting.name] = setting.kind.parse(value)
        except Invalid as err:
            problems.append(Problem(origin, setting.key, str(err)))
    config.sections = {name: SimpleNamespace(**vals) for name, vals in values.items()}
    if not problems:
        problems.extend(_cross_check(config))
    if problems:
        raise ConfigError(problems)
    return config


def _cross_check(config: Config) -> list[Problem]:
    """Rules that involve more than one setting."""
    problems = []
    anonymous = config.anonymous
    if anonymous.enabled:
        problems.extend(_check_anonymous(config))
    ports = config.passive.ports
    if len(ports) < config.server.workers:
        problems.append(Problem(
            config.origin("passive.ports"), "passive.ports",
            f"the range has {len(ports)} ports but there are {config.server.workers} workers; "
            "each worker needs at least one port of its own: widen the range or lower "
            "server.workers"))
    from .tlsrules import static_problems as tls_problems  # it imports this module

    problems.extend(tls_problems(config))
    from .isolation import config_problems as isolation_problems

    problems.extend(isolation_problems(config))
    return problems


def _check_anonymous(config: Config) -> list[Problem]:
    anonymous = config.anonymous
    if not anonymous.root or not os.path.isdir(anonymous.root):
        return [Problem(config.origin("anonymous.root"), "anonymous.root",
                        f"{anonymous.root!r} is not an existing directory")]
    if not anonymous.upload_dir:
        return []
    where = config.origin("anonymous.upload_dir")
    root = os.path.normpath(anonymous.root)
    upload = os.path.normpath(os.path.join(root, anonymous.upload_dir))
    if os.path.isabs(anonymous.upload_dir) or not upload.startswith(root + os.sep):
        return [Problem(where, "anonymous.upload_dir", 'must be a directory under '
                        'anonymous.root, given relative to it (e.g. "incoming")')]
    if not os.path.isdir(upload):
        return [Problem(where, "anonymous.upload_dir", f"{upload} does not exist")]
    return []


def warnings(config: Config, probe_ports: bool = False) -> list[str]:
    """Things that work but are probably not what the admin wants.

    Includes the NAT/firewall self-diagnosis of diagnose.py, which looks at
    this host (interfaces, sysctls); `probe_ports` also tries to bind every
    passive port (at start and in `ftpd check`, not on reload).
    """
    from . import diagnose  # it reads settings only, but keep config importable alone

    found = []
    ports = config.passive.ports
    if len(ports) < config.server.max_sessions:
        per_worker = len(ports) // max(config.server.workers, 1)
        found.append(
            f"{config.origin('passive.ports')}: passive.ports: the range has {len(ports)} ports, "
            f"fewer than server.max_sessions ({config.server.max_sessions}), split among "
            f"{config.server.workers} workers (~{per_worker} each); under load clients get "
            "'425 no passive port free': widen the range and open the same range in the "
            "firewall (`ftpd firewall` prints the rules)")
    found += diagnose.warnings(config, probe_ports=probe_ports)
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def render_default() -> str:
    """The commented default configuration file, derived from the settings table."""
    lines = [
        "# ftpd configuration (TOML). Every setting is listed with its default,",
        "# commented out: uncomment and change what you need.",
        "# Files in conf.d/*.toml beside this one are read afterwards, in lexical",
        "# order, and override single keys. Check changes with `ftpd check`, then",
        "# apply them with `systemctl reload ftpd` (settings marked 'restart' need",
        "# `systemctl restart ftpd`).",
    ]
    for section, doc in SECTIONS.items():
        lines += ["", f"# {doc}", f"[{section}]"]
        for setting in (s for s in SETTINGS if s.section == section):
            lines += _render_setting(setting)
    return "\n".join(lines) + "\n"


def _render_setting(setting: Setting) -> list[str]:
    note = "" if setting.reloadable else " (restart)"
    return [
        f"# {setting.doc}{note}",
        f"# Allowed: {setting.kind.allowed}.",
        f"#{setting.name} = {_toml_value(setting.default)}",
    ]


def render_reference() -> str:
    """The settings reference as a Markdown table (for the README)."""
    rows = ["| setting | default | allowed | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.key}` | `{_toml_value(s.default)}` | {s.kind.allowed} | {s.doc} |")
    return "\n".join(rows) + "\n"
