"""store.index_url: empty is the SQLite index; a PostgreSQL URL is read (tests/postgres); anything else is refused.

Through the command line, as a user meets it: a TOML file, the environment variable, ``config show`` and ``serve``.
"""

import json
import subprocess
import sys

import pytest

from service.config import ConfigError, load_config
from tests.helpers import free_port

PASSWORD = "pw-never-printed"


def _synthpacs(args, tmp_path, extra_env=None):
    env = {"SYNTHPACS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=120)


def test_empty_index_url_is_the_sqlite_default(tmp_path):
    assert load_config(None, env={}).store.index_url == ""
    result = _synthpacs(["config", "show", "--json"], tmp_path, {"SYNTHPACS_STORE_INDEX_URL": ""})
    assert result.returncode == 0, result.stderr


def test_config_show_masks_the_password_of_a_postgresql_url(tmp_path):
    url = f"postgresql://synthpacs:{PASSWORD}@db.hospital.internal:5432/synthpacs?sslmode=require"
    f = tmp_path / "synthpacs.toml"
    f.write_text(f'[store]\nindex_url = "{url}"\n')
    result = _synthpacs(["config", "show", "--json", "--config", str(f)], tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["store"]["index_url"]
    assert shown == "postgresql://synthpacs:********@db.hospital.internal:5432/synthpacs"
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("value", ["sqlite:///var/index.sqlite", "index.sqlite", "mysql://u@h/db", "postgresql://host:notaport/db",
                                   "postgresql://host:5432"])
def test_anything_but_a_postgresql_url_naming_a_database_is_refused(value):
    with pytest.raises(ConfigError, match="store.index_url"):
        load_config(None, env={"SYNTHPACS_STORE_INDEX_URL": value})


def test_serve_with_an_unreachable_postgresql_names_it_without_the_password(tmp_path):
    url = f"postgresql://synthpacs:{PASSWORD}@127.0.0.1:{free_port()}/synthpacs"
    result = _synthpacs(["serve", "--port", "0", "--grpc-port", "0", "--components", "dicom"], tmp_path,
                        {"SYNTHPACS_STORE_INDEX_URL": url, "SYNTHPACS_METRICS_ENABLED": "false"})
    assert result.returncode != 0
    assert "cannot connect to the PostgreSQL index at postgresql://synthpacs:********@127.0.0.1" in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    assert not (tmp_path / "home" / "store" / "index.sqlite").exists()  # no silent SQLite instead
