"""store.index_url: no backend reads it yet, so a value is refused at configuration load, never ignored.

Through the command line, as a user meets it: a TOML file, the environment variable, and ``serve``.
"""

import subprocess
import sys

import pytest

from service.config import ConfigError, load_config

PASSWORD = "pw-never-printed"
URL = f"postgresql://synthpacs:{PASSWORD}@db.hospital.internal:5432/synthpacs"


def _synthpacs(args, tmp_path, extra_env=None):
    env = {"SYNTHPACS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=120)


def _assert_refused(result):
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "store.index_url" in err
    assert "SQLite inside the home folder" in err
    assert "PostgreSQL" in err and "issue 20" in err
    assert "Several hosts must not share" in err
    assert PASSWORD not in err and PASSWORD not in result.stdout  # the URL's credentials stay out of the message
    assert "postgresql://..." in err


def test_empty_index_url_is_the_sqlite_default(tmp_path):
    assert load_config(None, env={}).store.index_url == ""
    result = _synthpacs(["config", "show", "--json"], tmp_path, {"SYNTHPACS_STORE_INDEX_URL": ""})
    assert result.returncode == 0, result.stderr


def test_index_url_in_a_toml_file_is_refused_by_config_show(tmp_path):
    f = tmp_path / "synthpacs.toml"
    f.write_text(f'[store]\nindex_url = "{URL}"\n')
    _assert_refused(_synthpacs(["config", "show", "--config", str(f)], tmp_path))


def test_index_url_from_the_environment_is_refused_by_config_show(tmp_path):
    _assert_refused(_synthpacs(["config", "show"], tmp_path, {"SYNTHPACS_STORE_INDEX_URL": URL}))


def test_serve_refuses_to_start_with_an_index_url(tmp_path):
    f = tmp_path / "synthpacs.toml"
    f.write_text(f'[store]\nindex_url = "{URL}"\n')
    result = _synthpacs(["serve", "--config", str(f), "--port", "0", "--grpc-port", "0"], tmp_path)
    _assert_refused(result)
    assert not (tmp_path / "home" / "store" / "index.sqlite").exists()  # refused before anything was opened


@pytest.mark.parametrize("value", ["sqlite:///var/index.sqlite", "index.sqlite", "  postgresql://x  "])
def test_any_value_is_refused_not_only_postgresql(value):
    with pytest.raises(ConfigError, match="store.index_url"):
        load_config(None, env={"SYNTHPACS_STORE_INDEX_URL": value})
