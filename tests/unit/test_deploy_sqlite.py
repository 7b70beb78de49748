"""The SQLite deployment (deploy/compose/compose.yaml) never shares its index between hosts
(service/archive/writer_lock.py says why): one synthpacs container on the home volume, with a fixed host name.

deploy/k8s runs on several nodes and so uses the PostgreSQL index everywhere (tests/unit/test_deploy_k8s.py).
"""

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_pins_the_host_name_of_its_one_synthpacs():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    on_home = [name for name, svc in compose["services"].items() if any("synthpacs-home" in str(v) for v in svc.get("volumes", []))]
    assert on_home == ["synthpacs"]
    assert compose["services"]["synthpacs"].get("hostname"), "a recreated container would count as a second host of the index"
