"""Configuration: TOML file, SYNTHPACS_* environment over it, CLI flags over both; secrets masked."""

import json
import subprocess
import sys

import pytest

from service.config import ConfigError, as_dict, load_config, to_toml


def test_defaults_need_no_outside_service():
    cfg = load_config(path=None, env={})
    assert cfg.home == "./var"
    assert cfg.dicom.bind == "127.0.0.1" and cfg.dicom.allow_loopback
    assert cfg.store.index_url == ""  # SQLite under home
    assert cfg.deid.enabled


def test_file_then_environment_then_flags(tmp_path):
    f = tmp_path / "synthpacs.toml"
    f.write_text('[dicom]\nport = 104\nae_title = "FROMFILE"\n[inference]\nmax_batch = 8\n')
    cfg = load_config(f, env={"SYNTHPACS_DICOM_PORT": "4242", "SYNTHPACS_INFERENCE_MAX_BATCH": "16"}, overrides={"dicom.port": 5555})
    assert cfg.dicom.port == 5555  # flag wins
    assert cfg.inference.max_batch == 16  # environment beats file
    assert cfg.dicom.ae_title == "FROMFILE"  # file beats default


def test_peers_from_toml_and_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[[dicom.peers]]\nae_title = "ORTHANC"\nhost = "10.0.0.5"\nport = 4242\n[outbox]\ndefault_destination = "ORTHANC"\n')
    cfg = load_config(f, env={})
    assert cfg.peer("ORTHANC").port == 4242
    env = {"SYNTHPACS_DICOM_PEERS": json.dumps([{"ae_title": "PACS", "host": "127.0.0.1"}])}
    assert load_config(None, env=env).dicom.peers[0].ae_title == "PACS"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[dicom]\nport = 70000\n", "dicom.port"),
        ("[dicom]\nprot = 1\n", "unknown setting(s) prot"),
        ("[dicom]\nport = \"abc\"\n", "dicom.port"),
        ("[store]\nduplicate_policy = \"overwrite\"\n", "store.duplicate_policy"),
        ("[dicom]\nae_title = \"THIS_IS_FAR_TOO_LONG\"\n", "AE title"),
        ("[outbox]\ndefault_destination = \"NOPE\"\n", "outbox.default_destination"),
        ("not toml [", "not valid TOML"),
        ("[dicom]\ntls_cert = \"a.pem\"\n", "dicom.tls_cert and dicom.tls_key go together"),
        ("[dicom]\ntls_ca = \"ca.pem\"\n", "need dicom.tls_cert and dicom.tls_key"),
        ("[dicom]\ntls_cert = \"a\"\ntls_key = \"b\"\ntls_require_client_cert = true\n", "tls_require_client_cert needs dicom.tls_ca"),
        ("[dicom]\ntls_handshake_timeout = 0\n", "dicom.tls_handshake_timeout"),
        ("[[dicom.peers]]\nae_title = \"P\"\nhost = \"h\"\ntls_ca = \"ca.pem\"\n", "set tls = true"),
        ("[[dicom.peers]]\nae_title = \"P\"\nhost = \"h\"\ntls = true\ntls_key = \"k\"\n", "tls_cert and tls_key go together"),
        ("[store]\nmin_free_percent = 100\n", "store.min_free_percent"),
        ("[store]\nmin_free_bytes = -1\n", "store.min_free_bytes"),
    ],
)
def test_bad_settings_are_named(tmp_path, text, fragment):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert fragment in str(err.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="SYNTHPACS_DICOM_PORT"):
        load_config(None, env={"SYNTHPACS_DICOM_PORT": "eleven"})


def test_secrets_are_masked_and_toml_round_trips(tmp_path):
    cfg = load_config(None, env={"SYNTHPACS_DEID_SECRET": "s3cret", "SYNTHPACS_GRPC_TOKENS": "a,b"})
    shown = as_dict(cfg)
    assert shown["deid"]["secret"] == "********" and shown["grpc"]["tokens"] == ["********"] * 2
    assert "s3cret" not in to_toml(shown)
    f = tmp_path / "round.toml"
    f.write_text(to_toml(as_dict(cfg, mask_secrets=False)))
    assert load_config(f, env={}) == cfg


def test_config_show_cli(tmp_path):
    env = {"SYNTHPACS_DEID_SECRET": "hunter2", "SYNTHPACS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "service", "config", "show", "--json"], env=env, capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(out)
    assert data["home"] == str(tmp_path)
    assert "hunter2" not in out and data["deid"]["secret"] == "********"
