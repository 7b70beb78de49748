"""The deployments never share the SQLite index between hosts (service/archive/writer_lock.py says why).

In Kubernetes a pod's host name is its own, so "one host" means one pod: of all the workloads whose
command opens the index, one runs, a StatefulSet (one pod, the same name wherever it is rescheduled).
"""

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Commands that open the store's index (directly or through the runtime); train, generate, evaluate do not.
INDEX_COMMANDS = {"scp", "serve", "inference", "dicomweb", "store", "outbox", "ingest", "dataset", "synthesize"}


def _workloads():
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
                yield path.name, doc


def _command(container: dict) -> str | None:
    """The synthpacs command a container runs (the image's entrypoint is synthpacs, its default ``serve``)."""
    command, args = container.get("command", []), container.get("args", [])
    if not command:
        return args[0] if args else "serve"
    words = [*command, *args]  # a launcher in front, e.g. torchrun ... --no-python synthpacs train
    return words[words.index("synthpacs") + 1] if "synthpacs" in words[:-1] else None


def test_one_pod_at_most_writes_the_sqlite_index():
    writers = []
    for name, doc in _workloads():
        containers = doc["spec"]["template"]["spec"]["containers"]
        if any(_command(c) in INDEX_COMMANDS for c in containers):
            assert doc["kind"] != "DaemonSet", f"{name}: a DaemonSet runs an index writer on every node"
            replicas = doc["spec"].get("replicas", 1)
            if replicas:
                writers.append((name, doc["kind"], replicas))
    assert len(writers) == 1, f"several workloads open the SQLite index: {writers}"
    (name, kind, replicas), = writers
    assert kind == "StatefulSet" and replicas == 1, f"{name}: the index writer must be one StatefulSet pod, not {kind} x{replicas}"


def test_the_training_job_does_not_open_the_index():
    jobs = [doc for _, doc in _workloads() if doc["kind"] == "Job"]
    assert jobs
    for job in jobs:
        for c in job["spec"]["template"]["spec"]["containers"]:
            assert _command(c) == "train"


def test_compose_pins_the_host_name_of_its_one_synthpacs():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    on_home = [name for name, svc in compose["services"].items() if any("synthpacs-home" in str(v) for v in svc.get("volumes", []))]
    assert on_home == ["synthpacs"]
    assert compose["services"]["synthpacs"].get("hostname"), "a recreated container would count as a second host of the index"
