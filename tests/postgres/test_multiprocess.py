"""Two ``synthpacs scp`` processes on one PostgreSQL index and one store folder (issue 20's scale-out test).

Eight associations spread over both; the same study sent to both at once (one copy stored, both senders
get success); a SIGKILL of one SCP in mid-stream; then every acknowledged instance is in the index with
its file and sha256, and once ``store verify --repair`` has indexed what the killed process had written but
not acknowledged, the index equals the files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

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
