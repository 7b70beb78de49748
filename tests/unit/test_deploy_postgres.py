"""deploy/compose/compose.postgres.yaml: every process that opens the shared store reads the PostgreSQL index."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.config import load_config

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"


def _compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.postgres.yaml").read_text())


def _synthpacs_services(compose: dict) -> dict:
    return {name: svc for name, svc in compose["services"].items() if any("synthpacs-home" in str(v) for v in svc.get("volumes", []))}


def test_every_process_on_the_shared_store_uses_the_postgresql_index():
    compose = _compose()
    on_home = _synthpacs_services(compose)
    assert set(on_home) == {"synthpacs-dicom-1", "synthpacs-dicom-2", "synthpacs-outbox", "synthpacs-grpc"}
    for name, svc in on_home.items():
        url = svc["environment"]["SYNTHPACS_STORE_INDEX_URL"]
        assert url.startswith("postgresql://synthpacs:${SYNTHPACS_PG_PASSWORD") and url.endswith("@postgres:5432/synthpacs"), name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
    components = sorted(svc["command"][2] for svc in on_home.values())
    assert components == ["dicom,metrics", "dicom,metrics", "grpc,metrics", "outbox,metrics"]


def test_the_password_is_required_from_the_environment_not_written_down():
    text = (COMPOSE / "compose.postgres.yaml").read_text()
    compose = _compose()
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${SYNTHPACS_PG_PASSWORD:?set SYNTHPACS_PG_PASSWORD}"
    assert text.count("SYNTHPACS_PG_PASSWORD:?") == 2


def test_the_configuration_each_replica_gets_is_one_synthpacs_accepts():
    svc = _compose()["services"]["synthpacs-dicom-1"]
    url = svc["environment"]["SYNTHPACS_STORE_INDEX_URL"].replace("${SYNTHPACS_PG_PASSWORD:?set SYNTHPACS_PG_PASSWORD}", "secret")
    cfg = load_config(COMPOSE / "synthpacs.toml", env={"SYNTHPACS_STORE_INDEX_URL": url})
    assert cfg.store.index_url == url


def test_host_ports_do_not_collide_and_prometheus_scrapes_every_process():
    compose = _compose()
    published = [p.rsplit(":", 1)[0] for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published))
    targets = yaml.safe_load((COMPOSE / "prometheus.postgres.yml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == sorted(_synthpacs_services(compose))
