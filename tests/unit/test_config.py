"""The settings table, the parser and the generated default file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftpd import config
from ftpd.settings import SETTINGS, Endpoint

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def problems(path: str) -> list[str]:
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    return [str(p) for p in err.value.problems]


def test_empty_file_gives_every_default(tmp_path):
    cfg = config.load(write(tmp_path / "f.toml", ""))
    for setting in SETTINGS:
        assert hasattr(getattr(cfg, setting.section), setting.name)
    assert cfg.server.listen == (Endpoint("0.0.0.0", 21),)
    assert cfg.server.workers == (os.cpu_count() or 1)
    assert cfg.passive.ports == range(50000, 51000)


def test_shipped_default_file_is_current_and_parses_to_defaults(tmp_path):
    shipped = (REPO / "etc" / "ftpd" / "ftpd.toml").read_text()
    assert shipped == config.render_default(), "regenerate with `ftpd defaults`"
    cfg = config.load(write(tmp_path / "ftpd.toml", shipped))
    assert cfg.server.banner == "ftpd ready."


def test_every_setting_is_documented_in_the_default_file():
    text = config.render_default()
    for setting in SETTINGS:
        assert f"#{setting.name} = " in text
        assert setting.doc in text


def test_unknown_key_and_section_name_file_and_key(tmp_path):
    path = write(tmp_path / "f.toml", "[server]\nlisten_on = 1\n[nope]\nx = 1\n")
    found = problems(path)
    assert any(f"{path}: server.listen_on: unknown key" in p for p in found)
    assert any(f"{path}: nope: unknown section" in p for p in found)


def test_wrong_types_are_all_reported_at_once(tmp_path):
    path = write(tmp_path / "f.toml",
                 '[server]\nworkers = "many"\nmax_sessions = "10"\nidle_timeout = true\n'
                 '[log]\nlevel = "loud"\n')
    found = "\n".join(problems(path))
    for key in ("server.workers", "server.max_sessions", "server.idle_timeout", "log.level"):
        assert key in found
    assert 'expected a number of processes from 1 to 256, or "auto"' in found


@pytest.mark.parametrize("value,needle", [
    ('"60000-50000"', "reversed"),
    ('"80-90"', "outside 1024-65535"),
    ('"50000"', "FIRST-LAST"),
    ('""', "FIRST-LAST"),
    ("5", "expected a range"),
])
def test_bad_port_ranges(tmp_path, value, needle):
    found = "\n".join(problems(write(tmp_path / "f.toml", f"[passive]\nports = {value}\n")))
    assert "passive.ports" in found and needle in found


def test_range_smaller_than_workers_is_an_error_and_smaller_than_sessions_a_warning(tmp_path):
    found = "\n".join(problems(write(tmp_path / "f.toml",
                                     '[server]\nworkers = 4\n[passive]\nports = "50000-50002"\n')))
    assert "passive.ports" in found and "4 workers" in found
    cfg = config.load(write(tmp_path / "g.toml",
                            '[server]\nworkers = 2\n[passive]\nports = "50000-50009"\n'))
    assert any("fewer than server.max_sessions" in w for w in config.warnings(cfg))


@pytest.mark.parametrize("value,expected", [
    ('["[::]:21"]', (Endpoint("::", 21),)),
    ('["127.0.0.1:2121", "[::1]:2121"]', (Endpoint("127.0.0.1", 2121), Endpoint("::1", 2121))),
])
def test_listen_endpoints(tmp_path, value, expected):
    cfg = config.load(write(tmp_path / "f.toml", f"[server]\nlisten = {value}\n"))
    assert cfg.server.listen == expected


@pytest.mark.parametrize("value", ['["localhost:21"]', '["1.2.3.4:0"]', '[]', '"0.0.0.0:21"',
                                   '["1.2.3.4:21", "1.2.3.4:21"]', '["[::1]21"]'])
def test_bad_listen_values(tmp_path, value):
    found = "\n".join(problems(write(tmp_path / "f.toml", f"[server]\nlisten = {value}\n")))
    assert "server.listen" in found


def test_malformed_toml_names_the_file(tmp_path):
    path = write(tmp_path / "f.toml", "[server\nlisten = ")
    found = problems(path)
    assert found[0].startswith(f"{path}: not valid TOML")


def test_conf_d_overrides_in_lexical_order_and_errors_name_the_dropin(tmp_path):
    main = write(tmp_path / "ftpd.toml", '[server]\nbanner = "main"\nworkers = 1\n')
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "20-b.toml", '[server]\nbanner = "b"\n')
    write(tmp_path / "conf.d" / "10-a.toml", '[server]\nbanner = "a"\nworkers = 2\n')
    cfg = config.load(main)
    assert cfg.server.banner == "b" and cfg.server.workers == 2
    assert cfg.origin("server.banner").endswith("20-b.toml")
    bad = write(tmp_path / "conf.d" / "30-c.toml", "[server]\nworkers = 0\n")
    assert any(p.startswith(f"{bad}: server.workers") for p in problems(main))


def test_missing_main_file(tmp_path):
    path = str(tmp_path / "absent.toml")
    assert problems(path) == [f"{path}: file not found"]


def test_readme_settings_reference_is_current():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- settings-reference:start", 1)[1].split("\n", 1)[1]
    block = block.split("<!-- settings-reference:end -->", 1)[0]
    assert block == config.render_reference(), "run scripts/regen"
