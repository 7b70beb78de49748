"""deploy/k8s: the kustomization renders, every object passes the Kubernetes schemas (offline, strict), and
the objects fit together: Services, PodDisruptionBudgets and NetworkPolicies select pods that exist, every
ConfigMap, Secret, key and volume a pod names is there, ports agree with the configuration, every process
that opens the index gets the PostgreSQL URL, and the probes ask what they claim to.

The kustomization is rendered by :func:`render`, a small renderer of exactly the kustomize features
deploy/k8s uses (resources, namespace, secretGenerator from env files without a name hash); any other
kustomization field fails the test instead of being ignored. Where kubectl is installed, its built-in
kustomize renders the same folder and the two results must be equal.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.config import load_config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The Secret the operator makes by hand (configmap.yaml says how); every other name must be rendered.
OPERATOR_SECRETS = {"synthpacs-secrets"}
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet")
# Commands that open the store's index (directly or through the runtime); train, generate, evaluate do not.
INDEX_COMMANDS = {"scp", "serve", "inference", "dicomweb", "store", "outbox", "ingest", "dataset", "synthesize"}
# Kinds that live in no namespace (kustomize's namespace field leaves them alone).
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
TEST_PASSWORD = "test-password-0123456789abcdef"


class RenderError(Exception):
    pass


# -- rendering ---------------------------------------------------------------------------------------------

def _env_file(path: Path) -> dict[str, str]:
    """A kustomize ``envs`` file: KEY=VALUE lines; blank lines and ``#`` comments skipped."""
    values = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise RenderError(f"{path.name}:{n}: not KEY=VALUE")
        values[key] = value
    return values


def render(folder: Path) -> list[dict]:
    """The objects ``kustomize build folder`` makes, for the fields deploy/k8s uses (others are refused)."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "generatorOptions"}
    if set(k) - known:
        raise RenderError(f"kustomization.yaml uses {sorted(set(k) - known)}, which this renderer does not implement")
    if k.get("secretGenerator") and not (k.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise RenderError("generated names carry a content hash unless disableNameSuffixHash: this renderer does not make hashes")
    objects = []
    for name in k["resources"]:
        path = folder / name
        if not path.is_file():
            raise RenderError(f"resource {name} does not exist")
        objects += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for gen in k.get("secretGenerator", []):
        if set(gen) - {"name", "envs"}:
            raise RenderError(f"secretGenerator {gen['name']}: only name and envs are implemented")
        data: dict[str, str] = {}
        for env in gen["envs"]:
            if not (folder / env).is_file():
                raise RenderError(f"secretGenerator {gen['name']}: {env} does not exist (make it from {env}.example)")
            data.update(_env_file(folder / env))
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": gen["name"]},
                        "data": {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}})
    if k.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def _operator_folder(tmp_path: Path, password: str = TEST_PASSWORD) -> Path:
    """deploy/k8s as an operator leaves it: postgres.env made from the example, the password filled in."""
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("postgres.env"))
    example = (folder / "postgres.env.example").read_text()
    (folder / "postgres.env").write_text(example.replace("\npassword=\n", f"\npassword={password}\n"))
    return folder


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> list[dict]:
    return render(_operator_folder(tmp_path_factory.mktemp("render")))


def _by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def _pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"].get("metadata", {}).get("labels", {})


def _matches(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist) against labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _selected(objects: list[dict], selector: dict) -> list[dict]:
    return [w for w in _workloads(objects) if _matches(selector, _pod_labels(w))]


def _secret_data(objects: list[dict], name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in _by_kind(objects, "Secret")[name].get("data", {}).items()}


def _toml(objects: list[dict]) -> dict:
    return tomllib.loads(_by_kind(objects, "ConfigMap")["synthpacs-config"]["data"]["synthpacs.toml"])


def _command(container: dict) -> str | None:
    """The synthpacs command a container runs (the image's entrypoint is synthpacs, its default ``serve``)."""
    command, args = container.get("command", []), container.get("args", [])
    if not command:
        return args[0] if args else "serve"
    words = [*command, *args]  # a launcher in front, e.g. torchrun ... --no-python synthpacs train
    return words[words.index("synthpacs") + 1] if "synthpacs" in words[:-1] else None


def _components(container: dict) -> str:
    args = container.get("args", [])
    return args[args.index("--components") + 1] if "--components" in args else ""


def _env_from_secret(container: dict, var: str) -> tuple[str, str] | None:
    for e in container.get("env", []):
        if e["name"] == var and "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            return ref["name"], ref["key"]
    return None


def test_the_renderer_agrees_with_kubectl_kustomize(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed; the structural checks still ran on render()")
    folder = _operator_folder(tmp_path)
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    ours = render(folder)
    for objs in (theirs, ours):  # kustomize wraps long base64 values over lines
        for o in objs:
            if o["kind"] == "Secret":
                o["data"] = {k: base64.b64decode(v) for k, v in o.get("data", {}).items()}
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, theirs)) == sorted(map(key, ours))
    mine = {key(o): o for o in ours}
    for o in theirs:
        assert o == mine[key(o)], key(o)


def test_without_postgres_env_nothing_renders(tmp_path):
    """The password is required: the kustomization does not build until the operator makes postgres.env."""
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("postgres.env"))
    with pytest.raises(RenderError, match=r"postgres.env does not exist \(make it from postgres.env.example\)"):
        render(folder)
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "postgres.env" in out.stderr


def test_no_password_is_committed():
    example = _env_file(K8S / "postgres.env.example")
    assert example["password"] == "", "the example must leave the password empty: the server then refuses to start"
    assert "postgres.env" in (K8S / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", str(K8S)], capture_output=True, text=True, cwd=K8S).stdout.split()
    assert not any(p.endswith("/postgres.env") for p in tracked)


# -- schemas -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_every_object_passes_the_kubernetes_schemas_strictly(objects, version):
    version = kubernetes_validate.latest_version() if version == "latest" else version
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field(objects):
    bad = copy.deepcopy(_by_kind(objects, "Deployment")["synthpacs-dicom"])
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30.0", strict=True)


# -- references between objects ----------------------------------------------------------------------------

def test_every_object_is_in_the_namespace(objects):
    (ns,) = _by_kind(objects, "Namespace")
    assert all(o["metadata"].get("namespace") == ns for o in objects if o["kind"] != "Namespace")


def test_services_select_pods_and_name_their_ports(objects):
    for name, svc in _by_kind(objects, "Service").items():
        workloads = _selected(objects, {"matchLabels": svc["spec"]["selector"]})
        assert len(workloads) == 1, f"Service {name} selects the pods of {len(workloads)} workloads, not one"
        ports = {p["name"]: p["containerPort"] for c in _pod_spec(workloads[0])["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service {name}: no container port named {p['targetPort']}"
            assert p["port"] == ports[p["targetPort"]], f"Service {name}: port {p['port']} differs from the container's"


def test_workload_selectors_match_their_own_pods(objects):
    for w in _workloads(objects):
        if "selector" in w["spec"]:
            assert _matches(w["spec"]["selector"], _pod_labels(w)), w["metadata"]["name"]
    sts = _by_kind(objects, "StatefulSet")["synthpacs-postgres"]
    headless = _by_kind(objects, "Service")[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"


def test_disruption_budgets_cover_replicated_workloads_and_allow_a_drain(objects):
    pdbs = _by_kind(objects, "PodDisruptionBudget")
    covered = set()
    for name, pdb in pdbs.items():
        (w,) = _selected(objects, pdb["spec"]["selector"])
        covered.add(w["metadata"]["name"])
        assert w["spec"]["replicas"] > pdb["spec"]["minAvailable"], f"{name} would block every node drain"
    assert covered == {"synthpacs-dicom", "synthpacs-outbox", "synthpacs-inference"}


def test_configmaps_secrets_keys_and_claims_exist(objects):
    configmaps, secrets = _by_kind(objects, "ConfigMap"), _by_kind(objects, "Secret")
    claims = _by_kind(objects, "PersistentVolumeClaim")
    for w in _workloads(objects):
        spec, name = _pod_spec(w), w["metadata"]["name"]
        templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, name
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, name
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in templates, f"{name}: mount {m['name']} has no volume"
            for ref in c.get("envFrom", []):
                assert ref["secretRef"]["name"] in set(secrets) | OPERATOR_SECRETS, name
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["data"], f"{name}: {e['name']}"
    made_by_hand = (K8S / "configmap.yaml").read_text()
    assert all(f"create secret generic {s}" in made_by_hand for s in OPERATOR_SECRETS)


def test_ports_agree_with_the_configuration(objects):
    toml = _toml(objects)
    deployments = _by_kind(objects, "Deployment")
    for name, w in deployments.items():
        for c in _pod_spec(w)["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["metrics"] == toml["metrics"]["port"], name
            assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(toml["metrics"]["port"])
    (scp,) = _pod_spec(deployments["synthpacs-dicom"])["containers"]
    assert {p["name"]: p["containerPort"] for p in scp["ports"]}["dicom"] == toml["dicom"]["port"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert scp[probe]["exec"]["command"][-1] == str(toml["dicom"]["port"])
    (inf,) = _pod_spec(deployments["synthpacs-inference"])["containers"]
    assert {p["name"]: p["containerPort"] for p in inf["ports"]}["grpc"] == toml["grpc"]["port"]
    assert inf["readinessProbe"]["grpc"]["port"] == inf["livenessProbe"]["grpc"]["port"] == toml["grpc"]["port"]
    policies = _by_kind(objects, "NetworkPolicy")
    assert [p["port"] for p in policies["synthpacs-dicom-from-pacs"]["spec"]["ingress"][0]["ports"]] == [toml["dicom"]["port"]]
    assert [p["port"] for p in policies["synthpacs-inference-grpc"]["spec"]["ingress"][0]["ports"]] == [toml["grpc"]["port"]]
    assert [p["port"] for p in policies["synthpacs-metrics-from-prometheus"]["spec"]["ingress"][0]["ports"]] == [toml["metrics"]["port"]]


def test_every_container_has_resource_requests_and_a_memory_limit(objects):
    for w in _workloads(objects):
        for c in _pod_spec(w)["containers"]:
            res, where = c.get("resources", {}), f"{w['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert "memory" in res.get("limits", {}), where
            gpus = res["limits"].get("nvidia.com/gpu")
            assert res["requests"].get("nvidia.com/gpu") == gpus, f"{where}: GPUs are requested as many as limited"


# -- the index: PostgreSQL for every process that opens it ------------------------------------------------

def test_every_process_that_opens_the_index_gets_the_postgresql_url(objects, tmp_path):
    secret = _secret_data(objects, "synthpacs-postgres")
    toml_text = _by_kind(objects, "ConfigMap")["synthpacs-config"]["data"]["synthpacs.toml"]
    assert "index_url" not in tomllib.loads(toml_text).get("store", {}), "the URL comes from the Secret, not the ConfigMap"
    config = tmp_path / "synthpacs.toml"
    config.write_text(toml_text)
    openers = []
    for w in _workloads(objects):
        for c in _pod_spec(w)["containers"]:
            if _command(c) not in INDEX_COMMANDS:
                continue
            assert w["kind"] != "DaemonSet"
            openers.append(w["metadata"]["name"])
            assert _env_from_secret(c, "SYNTHPACS_STORE_INDEX_URL") == ("synthpacs-postgres", "index_url"), w["metadata"]["name"]
            assert _env_from_secret(c, "PGPASSWORD") == ("synthpacs-postgres", "password"), w["metadata"]["name"]
            cfg = load_config(config, env={"SYNTHPACS_STORE_INDEX_URL": secret["index_url"]})
            assert cfg.store.index_url.startswith("postgresql://"), "never the SQLite index on the shared volume"
    assert sorted(openers) == ["synthpacs-dicom", "synthpacs-inference", "synthpacs-outbox"]


def test_the_index_url_names_the_evaluation_server(objects):
    from urllib.parse import urlsplit

    url = urlsplit(_secret_data(objects, "synthpacs-postgres")["index_url"])
    sts = _by_kind(objects, "StatefulSet")["synthpacs-postgres"]
    (pg,) = _pod_spec(sts)["containers"]
    env = {e["name"]: e.get("value") for e in pg["env"]}
    assert url.hostname == sts["spec"]["serviceName"] and url.port == 5432 and url.password is None
    assert url.username == env["POSTGRES_USER"] and url.path.strip("/") == env["POSTGRES_DB"]
    assert _env_from_secret(pg, "POSTGRES_PASSWORD") == ("synthpacs-postgres", "password")


def test_the_cluster_runs_scp_replicas_outbox_senders_and_gpu_inference(objects):
    from service.cli.serve import parse_components

    deployments = _by_kind(objects, "Deployment")
    roles = {}
    for name, w in deployments.items():
        (c,) = _pod_spec(w)["containers"]
        assert _command(c) == "serve"
        roles[name] = (parse_components(_components(c)), w["spec"]["replicas"])
    assert roles["synthpacs-dicom"] == (("dicom", "metrics"), 2)
    assert roles["synthpacs-outbox"] == (("outbox", "metrics"), 2)
    assert roles["synthpacs-inference"] == (("grpc", "metrics"), 2)
    (inf,) = _pod_spec(deployments["synthpacs-inference"])["containers"]
    assert inf["resources"]["limits"]["nvidia.com/gpu"] == 1
    # What GenerateStudy queues is sent: a process running the outbox shares the index with the writers.
    assert any("outbox" in comps and n > 0 for comps, n in roles.values())
    assert _by_kind(objects, "Service")["synthpacs-dicom"]["spec"]["ports"][0]["protocol"] == "TCP"


def test_the_training_job_does_not_open_the_index(objects):
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert jobs
    for job in jobs:
        for c in _pod_spec(job)["containers"]:
            assert _command(c) == "train"
            assert _env_from_secret(c, "SYNTHPACS_STORE_INDEX_URL") is None


# -- network policy ----------------------------------------------------------------------------------------

def test_only_the_pacs_reaches_the_dicom_port(objects):
    policies = _by_kind(objects, "NetworkPolicy")
    assert policies["synthpacs-default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    dicom_port = _toml(objects)["dicom"]["port"]
    (scp,) = [w for w in _workloads(objects) if w["metadata"]["name"] == "synthpacs-dicom"]
    rules = [r for p in policies.values() if _matches(p["spec"]["podSelector"], _pod_labels(scp)) for r in p["spec"].get("ingress", [])]
    dicom_rules = [r for r in rules if any(port["port"] == dicom_port for port in r.get("ports", []))]
    assert len(dicom_rules) == 1 and dicom_rules[0]["from"], "the DICOM port must name who may reach it"
    assert dicom_rules[0]["from"] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "the placeholder the README documents"
    assert all(r.get("ports") and dicom_port not in [p["port"] for p in r["ports"]] for r in rules if r not in dicom_rules)


def test_network_policies_select_existing_pods_and_postgres_admits_exactly_the_index_clients(objects):
    for name, policy in _by_kind(objects, "NetworkPolicy").items():
        spec = policy["spec"]
        if spec["podSelector"]:
            assert _selected(objects, spec["podSelector"]), f"{name} selects no pods"
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert _selected(objects, peer["podSelector"]), f"{name}: a rule admits pods that do not exist"
    pg = _by_kind(objects, "NetworkPolicy")["synthpacs-postgres-from-synthpacs"]["spec"]
    assert [w["metadata"]["name"] for w in _selected(objects, pg["podSelector"])] == ["synthpacs-postgres"]
    (rule,) = pg["ingress"]
    admitted = {w["metadata"]["name"] for peer in rule["from"] for w in _selected(objects, peer["podSelector"])}
    assert admitted == {"synthpacs-dicom", "synthpacs-outbox", "synthpacs-inference"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]


# -- probes that ask what they claim -----------------------------------------------------------------------

def _scp_container(objects) -> dict:
    (c,) = _pod_spec(_by_kind(objects, "Deployment")["synthpacs-dicom"])["containers"]
    return c


def test_the_scp_probes_c_echo_as_a_peer_the_configuration_admits(objects):
    toml, c = _toml(objects), _scp_container(objects)
    commands = {tuple(c[p]["exec"]["command"]) for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    (command,) = commands
    assert command[0] == "echoscu"
    aet, aec = command[command.index("-aet") + 1], command[command.index("-aec") + 1]
    assert aec == toml["dicom"]["ae_title"]
    assert toml["dicom"]["allow_loopback"] is False
    assert {"ae_title": aet, "host": "127.0.0.1"} in toml["dicom"]["peers"], "the probe's AE is admitted from loopback only, and is no destination"
    dockerfile = (K8S.parent / "Dockerfile").read_text()
    assert "dcmtk" in dockerfile, "echoscu comes with the image's dcmtk"


def test_inference_readiness_names_a_preloaded_model(objects):
    from service.inference.server import model_health_name

    toml = _toml(objects)
    (c,) = _pod_spec(_by_kind(objects, "Deployment")["synthpacs-inference"])["containers"]
    assert c["readinessProbe"]["grpc"]["service"] in {model_health_name(m) for m in toml["inference"]["preload"]}
    assert c["livenessProbe"]["grpc"]["service"] == ""


def test_outbox_probes_are_a_real_command_and_the_metrics_port(objects):
    from service.cli import build_parser

    (c,) = _pod_spec(_by_kind(objects, "Deployment")["synthpacs-outbox"])["containers"]
    command = c["readinessProbe"]["exec"]["command"]
    assert command[0] == "synthpacs"
    args = build_parser().parse_args(command[1:])
    assert args.outbox_command == "ls"
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}


@pytest.mark.integration
def test_the_scp_probe_passes_against_a_running_scp_and_other_loopback_callers_are_refused(objects, tmp_path):
    """The manifest's exact echoscu command, against `serve --components dicom` on the ConfigMap's configuration."""
    from tests.helpers import free_port, require_tool

    echoscu = require_tool("echoscu", "dcmtk")
    config = tmp_path / "synthpacs.toml"
    config.write_text(_by_kind(objects, "ConfigMap")["synthpacs-config"]["data"]["synthpacs.toml"])
    port = free_port()
    env = dict(os.environ, SYNTHPACS_CONFIG=str(config), SYNTHPACS_HOME=str(tmp_path / "home"), SYNTHPACS_DICOM_BIND="127.0.0.1",
               SYNTHPACS_DICOM_PORT=str(port), SYNTHPACS_METRICS_ENABLED="false", SYNTHPACS_DEID_SECRET="test")
    log = open(tmp_path / "scp.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--components", "dicom"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = [echoscu, *_scp_container(objects)["readinessProbe"]["exec"]["command"][1:-1], str(port)]
        deadline, rc = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            rc = subprocess.run(probe, capture_output=True, timeout=30).returncode
            if rc == 0:
                break
            time.sleep(0.5)
        assert rc == 0, (tmp_path / "scp.log").read_text()[-2000:]
        other = [echoscu, "-aet", "SOMEONE", "-aec", "SYNTHPACS", "-to", "5", "-ta", "5", "-td", "5", "127.0.0.1", str(port)]
        assert subprocess.run(other, capture_output=True, timeout=30).returncode != 0, "allow_loopback = false admits only the probe's AE"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.integration
def test_the_index_url_and_password_as_the_pods_get_them_open_a_real_postgresql(objects, tmp_path):
    """The Secret's index_url has no password; libpq takes it from PGPASSWORD. Checked against a server that
    demands one (scram-sha-256), with `synthpacs store migrate` as a pod would run it; a wrong password is
    refused with a message that does not print it. The outbox pods' readiness command passes on that index."""
    from urllib.parse import urlsplit, urlunsplit

    from tests.pg import started_or_skip

    gen = started_or_skip()
    server = next(gen)
    try:
        import psycopg

        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(f"ALTER ROLE synthpacs PASSWORD '{TEST_PASSWORD}'")
            conn.execute("CREATE DATABASE synthpacs")
        (server.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # the postmaster rereads pg_hba.conf on SIGHUP; a new connection sees it
        secret = _secret_data(objects, "synthpacs-postgres")
        parts = urlsplit(secret["index_url"])
        url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{server.port}"))
        env = dict(os.environ, SYNTHPACS_HOME=str(tmp_path / "home"), SYNTHPACS_STORE_INDEX_URL=url)
        env.pop("SYNTHPACS_CONFIG", None)

        def run(argv: list[str], password: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "service", *argv], env=dict(env, PGPASSWORD=password),
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path)

        def migrate(password: str) -> subprocess.CompletedProcess:
            return run(["store", "migrate"], password)

        wrong = migrate("not-the-password")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr + wrong.stdout
        assert "not-the-password" not in wrong.stderr + wrong.stdout
        ok = migrate(secret["password"])
        assert ok.returncode == 0, ok.stderr
        assert "schema version" in ok.stdout and TEST_PASSWORD not in ok.stdout + ok.stderr
        (outbox,) = _pod_spec(_by_kind(objects, "Deployment")["synthpacs-outbox"])["containers"]
        ready = run(outbox["readinessProbe"]["exec"]["command"][1:], secret["password"])
        assert ready.returncode == 0, ready.stderr
        assert run(outbox["readinessProbe"]["exec"]["command"][1:], "not-the-password").returncode != 0
    finally:
        gen.close()
