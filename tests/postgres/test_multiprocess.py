"""Two ``synthpacs scp`` processes on one PostgreSQL index and one store folder (issue 20's scale-out test).

Eight associations spread over both; the same study sent to both at once (one copy stored, both senders
get success); a SIGKILL of one SCP in mid-stream; then every acknowledged instance is in the index with
its file and sha256, and once ``store verify --repair`` has indexed what the killed process had written but
not acknowledged, the index equals the files. Two outbox workers share the queue and deliver every item to
Orthanc though one of them is killed in mid-stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from models.fileio import sha256_file
from service.archive.index import Index
from service.data.phantom import phantom_dataset
from tests.helpers import REPO
from tests.ingest.util import SCPProcess, scu
from tests.synthetic.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _study(count: int, size: int = 64) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [phantom_dataset(size, size, seed=n % 4, study_uid=study, series_uid=series, instance_number=n + 1, patient_id=f"P-{study[-6:]}")
            for n in range(count)]


def _send(port: int, datasets: list[Dataset], acked: list[str], stop_at_first_failure: bool = True) -> list[int]:
    """C-STORE each dataset over one association; appends the SOP Instance UIDs answered with success."""
    ae = scu()
    statuses: list[int] = []
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHPACS")
        if not assoc.is_established:
            return [-1] * len(datasets)
        try:
            for ds in datasets:
                try:
                    rsp = assoc.send_c_store(ds)
                except Exception:  # noqa: BLE001 - the association died with the process
                    rsp = None
                status = int(rsp.Status) if rsp is not None and "Status" in rsp else -1
                statuses.append(status)
                if status == 0:
                    acked.append(str(ds.SOPInstanceUID))
                elif stop_at_first_failure:
                    break
            if assoc.is_established:
                assoc.release()
        finally:
            if assoc.is_established:
                assoc.abort()
    finally:
        ae.shutdown()
    return statuses


def test_two_scp_processes_on_one_postgresql_index(tmp_path, pg_url):
    home = tmp_path / "home"
    home.mkdir()
    # De-identification off: the UIDs sent are the UIDs stored, so each acknowledgement can be checked.
    env = {"SYNTHPACS_STORE_INDEX_URL": pg_url, "SYNTHPACS_DEID_ENABLED": "false"}
    scps = [SCPProcess(home, env=env).start(), SCPProcess(home, env=env).start()]
    try:
        # 8 associations, 4 to each process, each with a study of its own, all at once.
        studies = [_study(5) for _ in range(8)]
        acked: list[list[str]] = [[] for _ in studies]
        threads = [threading.Thread(target=_send, args=(scps[n % 2].port, studies[n], acked[n])) for n in range(8)]
        # The same study to both processes at the same moment.
        same = _study(6)
        same_acked: list[list[str]] = [[], []]
        threads += [threading.Thread(target=_send, args=(scps[n].port, same, same_acked[n])) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for n, study in enumerate(studies):
            assert acked[n] == [str(ds.SOPInstanceUID) for ds in study], f"association {n}: {scps[n % 2].log()[-3000:]}"
        assert same_acked[0] == same_acked[1] == [str(ds.SOPInstanceUID) for ds in same]

        # A long stream to the first process, killed after some acknowledgements.
        stream = _study(60)
        stream_acked: list[str] = []
        sender = threading.Thread(target=_send, args=(scps[0].port, stream, stream_acked))
        sender.start()
        assert wait_for(lambda: len(stream_acked) >= 5, timeout=120), scps[0].log()[-3000:]
        scps[0].kill()
        sender.join(120)
        assert 5 <= len(stream_acked) < len(stream)
        # The other process goes on serving.
        after: list[str] = []
        late = _study(3)
        _send(scps[1].port, late, after)
        assert after == [str(ds.SOPInstanceUID) for ds in late]
    finally:
        for scp in scps:
            scp.stop()

    acknowledged = [u for a in acked for u in a] + same_acked[0] + stream_acked + after
    index = Index(url=pg_url)
    try:
        store_root = home / "store"
        for uid in acknowledged:
            record = index.get(uid)
            assert record is not None, f"acknowledged instance {uid} is not in the index"
            assert sha256_file(store_root / record.path) == record.sha256
        assert index.stats()["instances"] >= len(acknowledged)
        same_rows = list(index.instances("i.study_uid = ?", (str(same[0].StudyInstanceUID),)))
        assert len(same_rows) == len(same)  # one copy of the study sent to both
    finally:
        index.close()

    # Index equal to the files: what the killed process wrote without acknowledging is indexed by the repair.
    cli_env = dict(os.environ, SYNTHPACS_HOME=str(home), **env)
    verify = subprocess.run([sys.executable, "-m", "service", "store", "verify", "--repair", "--json"], env=cli_env,
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert verify.returncode == 0, verify.stderr
    again = subprocess.run([sys.executable, "-m", "service", "store", "verify", "--json"], env=cli_env,
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    assert json.loads(again.stdout) == {"missing": [], "corrupt": [], "orphans": []}


class _OutboxWorker:
    """``synthpacs serve --components outbox`` as a process of its own."""

    def __init__(self, home: Path, env: dict[str, str], n: int):
        self.log_path = home.parent / f"outbox-{n}.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--home", str(home), "--components", "outbox",
                                      "--log-level", "debug"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env=dict(os.environ, SYNTHPACS_METRICS_ENABLED="false", **env))
        log.close()
        started = wait_for(lambda: self.proc.poll() is not None or "outbox_started" in self.log(), timeout=120)
        assert started and self.proc.poll() is None, self.log()[-3000:]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def test_two_outbox_workers_deliver_every_item_to_orthanc_though_one_is_killed(tmp_path, pg_url):
    from service.archive.store import Store
    from service.synthetic.outbox import Outbox
    from tests.helpers import make_config
    from tests.peers import start_orthanc

    orthanc = start_orthanc(tmp_path / "orthanc")
    home = tmp_path / "home"
    home.mkdir()
    peers = [{"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    env = {"SYNTHPACS_STORE_INDEX_URL": pg_url, "SYNTHPACS_DICOM_PEERS": json.dumps(peers), "SYNTHPACS_OUTBOX_BATCH_SIZE": "4",
           "SYNTHPACS_OUTBOX_HEALTH_INTERVAL_S": "0"}
    cfg = make_config(home, **{"store.index_url": pg_url, "dicom.peers": peers, "deid.enabled": False})
    store = Store(cfg)
    workers: list[_OutboxWorker] = []
    try:
        uids = [store.put(ds, source="import").record.sop_instance_uid for ds in _study(80, size=32)]
        outbox = Outbox(cfg, store.index)
        workers = [_OutboxWorker(home, env, n) for n in range(2)]
        outbox.enqueue(uids, orthanc.ae_title)
        assert wait_for(lambda: len(orthanc.instances()) >= 5, timeout=120), workers[0].log()[-3000:]
        workers[0].stop(signal.SIGKILL)
        done = wait_for(lambda: all(r.state == "sent" for r in outbox.items(sop_instance_uids=uids)), timeout=180, interval=0.5)
        assert done, [r.state for r in outbox.items(sop_instance_uids=uids)]
        # Every item delivered; a re-send of one the killed worker had sent unmarked is the same instance to Orthanc.
        assert len(orthanc.instances()) == len(uids)
        assert {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.instances()} == set(uids)
    finally:
        for w in workers:
            w.stop()
        store.close()
        orthanc.stop()
