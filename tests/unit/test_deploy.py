"""The deployment files parse, and the configuration they carry is one synthpacs accepts."""

import tomllib
from pathlib import Path

import pytest
import yaml

from service.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_parses(path):
    assert _docs(path)


def test_configmap_toml_is_a_valid_synthpacs_config(tmp_path):
    (cm,) = _docs(DEPLOY / "k8s" / "configmap.yaml")
    f = tmp_path / "synthpacs.toml"
    f.write_text(cm["data"]["synthpacs.toml"])
    cfg = load_config(f, env={})
    assert cfg.dicom.bind == "0.0.0.0" and cfg.outbox.default_destination == "HOSPITALPACS"


def test_compose_toml_is_a_valid_synthpacs_config():
    cfg = load_config(DEPLOY / "compose" / "synthpacs.toml", env={})
    assert cfg.peer("ORTHANC").host == "orthanc"


def test_ports_agree_between_config_and_manifests():
    (cm,) = _docs(DEPLOY / "k8s" / "configmap.yaml")
    toml = tomllib.loads(cm["data"]["synthpacs.toml"])
    dicom = _docs(DEPLOY / "k8s" / "dicom.yaml")[0]
    inference = _docs(DEPLOY / "k8s" / "inference.yaml")[0]
    dicom_ports = {p["name"]: p["containerPort"] for p in dicom["spec"]["template"]["spec"]["containers"][0]["ports"]}
    grpc_ports = {p["name"]: p["containerPort"] for p in inference["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert dicom_ports["dicom"] == toml["dicom"]["port"]
    assert grpc_ports["grpc"] == toml["grpc"]["port"]
    assert dicom_ports["metrics"] == grpc_ports["metrics"] == toml["metrics"]["port"]
