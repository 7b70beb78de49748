"""Query/Retrieve SCP on the service's one AE (PS3.4 Annex C): Patient Root and Study Root C-FIND, C-GET, C-MOVE.

Viewers find synthetic studies here, and received (de-identified) ones unless ``qr.synthetic_only`` hides
everything that is not synthetic. The index answers the queries:

* C-FIND (C.4.1) at PATIENT (Patient Root only), STUDY, SERIES and IMAGE level, answered by the
  protocol-free :class:`service.archive.query.QueryEngine` (matching, levels, sequence keys, computed keys;
  its docstring says which rules). Every requested key comes back, with its value or empty.
* C-GET (C.4.3) sends the matching instances back over the same association (the requestor takes the SCP
  role for their Storage SOP Classes, PS3.7 D.3.3.4); compressed instances the requestor did not accept
  are decompressed.
* A Study Root C-MOVE or C-GET at PATIENT level (which Orthanc 1.10 sends to retrieve a patient) is
  accepted as the whole patient unless ``qr.lenient_patient_level_study_root`` is false (then 0xA900).
* C-MOVE (C.4.2) sends them to a Move Destination that is a ``dicom.peers`` entry with a port, on a new
  association negotiated like the outbox's (stored syntax first, uncompressed fallback, TCP_NODELAY).
  An unknown destination gets 0xA801.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pydicom
from prometheus_client import Counter
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from service.archive import status
from service.config import Config, ConfigError
from service.archive.query import (
    IMAGE,
    LEVELS,
    PATIENT,
    RANK,
    SERIES,
    STUDY,
    UNIQUE_KEY,
    QueryEngine,
    QueryError,
    element_text,
    match_value,  # noqa: F401  (re-exported: the matching rules' tests and older callers import it from here)
    values_of,
)
from service.dicom.scu import TUNING_HANDLERS, storage_contexts_for
from service.dicom.tls import client_args
from service.logs import get_logger

QR_REQUESTS = Counter("synthpacs_qr_requests_total", "Query/Retrieve requests, by operation and outcome", ["operation", "outcome"])
QR_MATCHES = Counter("synthpacs_qr_matches_total", "C-FIND matches returned and C-GET/C-MOVE instances sent", ["operation"])

log = get_logger("qr")

PATIENT_ROOT = "patient"
STUDY_ROOT = "study"
FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): STUDY_ROOT,
}
GET_MODELS = {
    str(PatientRootQueryRetrieveInformationModelGet): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): STUDY_ROOT,
}
MOVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): STUDY_ROOT,
}
QR_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


# -- the SCP ----------------------------------------------------------------------------------------------


class QueryRetrieveSCP:
    """Handlers and presentation contexts to add to the SCP's AE (``StorageSCP(extra_handlers=..., extra_contexts=...)``)."""

    def __init__(self, cfg: Config, store: Any):
        self.cfg = cfg
        self.store = store
        self.index = store.index

    # -- wiring -------------------------------------------------------------------------------------------

    def contexts(self) -> list[PresentationContext]:
        return [build_context(uid, QR_TRANSFER_SYNTAXES) for uid in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS)]

    def handlers(self) -> list[tuple[Any, Callable]]:
        return [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_GET, self.on_get), (evt.EVT_C_MOVE, self.on_move)]

    @staticmethod
    def accept_get_roles(contexts: list[PresentationContext]) -> None:
        """Let C-GET requestors take the SCP role for Storage (PS3.4 C.4.3, PS3.7 D.3.3.4 role selection).

        Applied to the Storage contexts the SCP already supports; peers that propose no role selection
        (storescu, Orthanc's C-STORE) negotiate exactly as before.
        """
        qr = set(FIND_MODELS) | set(GET_MODELS) | set(MOVE_MODELS) | {"1.2.840.10008.1.1"}
        for cx in contexts:
            if str(cx.abstract_syntax) not in qr:
                cx.scu_role = True
                cx.scp_role = True

    # -- C-FIND ---------------------------------------------------------------------------------------------

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        """C-FIND (PS3.4 C.4.1): one Pending response per match, then Success."""
        started = time.perf_counter()
        root = FIND_MODELS.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        try:
            identifier = event.identifier
            level = self._level(identifier, root)
            matches = self.find(identifier, level)
        except QueryError as exc:
            log.warning("c_find_refused", status=f"0x{exc.status:04X}", reason=str(exc))
            QR_REQUESTS.labels("find", "refused").inc()
            yield exc.status, None
            return
        except Exception as exc:  # a broken query must not end the association
            log.exception("c_find_failed", error=type(exc).__name__)
            QR_REQUESTS.labels("find", "failed").inc()
            yield status.QR_UNABLE_TO_PROCESS, None
            return
        sent = 0
        for ds in matches:
            if event.is_cancelled:
                log.info("c_find_cancelled", level=level, sent=sent)
                yield status.CANCEL, None
                return
            sent += 1
            yield status.PENDING, ds
        log.info("c_find", level=level, model=root, matches=sent, seconds=round(time.perf_counter() - started, 3))
        QR_REQUESTS.labels("find", "ok").inc()
        QR_MATCHES.labels("find").inc(sent)

    def engine(self) -> QueryEngine:
        """The protocol-free query engine over this SCP's store (service/archive/query.py)."""
        return QueryEngine(self.index, self.store.root, self.cfg.dicom.ae_title, synthetic_only=self.cfg.qr.synthetic_only,
                           max_results=self.cfg.qr.max_results)

    def find(self, identifier: Dataset, level: str) -> list[Dataset]:
        """The response identifiers for a C-FIND at ``level``."""
        engine = self.engine()
        found = engine.find(identifier, level)
        if engine.truncated:
            log.warning("c_find_truncated", level=level, max_results=self.cfg.qr.max_results)
        return found

    def _level(self, identifier: Dataset, root: str, retrieve: bool = False) -> str:
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(status.QR_IDENTIFIER_MISMATCH, f"Query/Retrieve Level {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
        if level == PATIENT and root == STUDY_ROOT:
            if retrieve and self.cfg.qr.lenient_patient_level_study_root:
                # Orthanc 1.10 retrieves a patient with a Study Root C-MOVE at PATIENT level; like many archives
                # we accept it (qr.lenient_patient_level_study_root, docs/conformance.md).
                return level
            raise QueryError(status.QR_IDENTIFIER_MISMATCH, "the Study Root model has no PATIENT level (PS3.4 C.6.2)")
        return level

    # -- C-GET and C-MOVE --------------------------------------------------------------------------------

    def retrieve_records(self, identifier: Dataset, level: str) -> list[Any]:
        """The stored instances a C-GET/C-MOVE identifier asks for (PS3.4 C.4.2.1.4 / C.4.3.1.3)."""
        key = UNIQUE_KEY[level]
        wanted = [v.strip() for v in values_of(element_text(identifier[key])) if v.strip()] if key in identifier else []
        if not wanted:
            raise QueryError(status.QR_IDENTIFIER_MISMATCH, f"a {level}-level retrieve needs {key} (PS3.4 C.4.2.2.1)")
        column = {PATIENT: "p.patient_id", STUDY: "i.study_uid", SERIES: "i.series_uid", IMAGE: "i.sop_instance_uid"}[level]
        where = [f"{column} IN ({', '.join('?' for _ in wanted)})"]
        params: list[Any] = list(wanted)
        # Higher-level unique keys narrow the match when given (hierarchical retrieve).
        for upper in LEVELS[: RANK[level]]:
            ukey = UNIQUE_KEY[upper]
            if ukey in identifier and element_text(identifier[ukey]).strip():
                col = {PATIENT: "p.patient_id", STUDY: "i.study_uid", SERIES: "i.series_uid"}[upper]
                vals = [v.strip() for v in values_of(element_text(identifier[ukey])) if v.strip()]
                where.append(f"{col} IN ({', '.join('?' for _ in vals)})")
                params += vals
        if self.cfg.qr.synthetic_only:
            where.append("i.synthetic = 1")
        return list(self.index.instances(" AND ".join(where), tuple(params), order="i.study_uid, i.series_uid, i.instance_number"))

    def _retrieve_level(self, event: Any, models: dict[str, str]) -> tuple[Dataset, str]:
        root = models.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        identifier = event.identifier
        return identifier, self._level(identifier, root, retrieve=True)

    def _datasets(self, records: list[Any], event: Any, accepted: Callable[[], list[PresentationContext]]) -> Iterator[tuple[int, Dataset | None]]:
        for rec in records:
            if event.is_cancelled:
                yield status.CANCEL, None
                return
            try:
                ds = pydicom.dcmread(self.store.path_of(rec))
            except Exception as exc:  # missing or damaged file: that sub-operation fails, the others go on
                log.error("retrieve_read_failed", error=type(exc).__name__)
                yield status.PENDING, Dataset()
                continue
            yield status.PENDING, _fit_to_contexts(ds, accepted())

    def on_get(self, event: Any) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3): number of sub-operations, then each instance over this association."""
        try:
            identifier, level = self._retrieve_level(event, GET_MODELS)
            records = self.retrieve_records(identifier, level)
        except QueryError as exc:
            log.warning("c_get_refused", status=f"0x{exc.status:04X}", reason=str(exc))
            QR_REQUESTS.labels("get", "refused").inc()
            # pynetdicom answers a count of 0 with Success; one (failing) sub-operation carries the status.
            yield 1
            yield exc.status, None
            return
        except Exception as exc:
            log.exception("c_get_failed", error=type(exc).__name__)
            QR_REQUESTS.labels("get", "failed").inc()
            yield 1
            yield status.QR_UNABLE_TO_PROCESS, None
            return
        log.info("c_get", level=level, instances=len(records))
        QR_REQUESTS.labels("get", "ok").inc()
        QR_MATCHES.labels("get").inc(len(records))
        yield len(records)
        yield from self._datasets(records, event, lambda: [cx for cx in event.assoc.accepted_contexts if cx.as_scu])

    def on_move(self, event: Any) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2): destination from the config, then the instances on a new association."""
        destination = str(event.move_destination).strip()
        peer = self.cfg.peer(destination)
        if peer is None or peer.port is None:
            log.warning("c_move_refused", reason="unknown move destination", destination=destination)
            QR_REQUESTS.labels("move", "refused").inc()
            yield None, None
            return
        problem: QueryError | None = None
        records: list[Any] = []
        level = ""
        tls: dict[str, Any] = {}
        try:
            tls = client_args(self.cfg, peer)  # DICOM TLS to the destination (PS3.15 Annex B) when its entry says so
            identifier, level = self._retrieve_level(event, MOVE_MODELS)
            records = self.retrieve_records(identifier, level)
            pairs = {(r.sop_class_uid, r.transfer_syntax_uid) for r in records}
            contexts = storage_contexts_for(pairs) if pairs else []
        except QueryError as exc:
            problem = exc
        except ConfigError as exc:  # the destination's TLS files cannot be used
            problem = QueryError(status.QR_UNABLE_TO_PERFORM_SUBOPS, str(exc))
        except ValueError as exc:  # more SOP Class / syntax pairs than one association can carry
            problem = QueryError(status.QR_UNABLE_TO_PERFORM_SUBOPS, str(exc))
        if problem is not None:
            log.warning("c_move_refused", status=f"0x{problem.status:04X}", reason=str(problem))
            QR_REQUESTS.labels("move", "refused").inc()
            # pynetdicom asks for the destination first and answers a count of 0 with Success, so one
            # (failing) sub-operation carries the status.
            yield peer.host, peer.port, {"contexts": storage_contexts_for([("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1")]),
                                         "evt_handlers": TUNING_HANDLERS, **tls}
            yield 1
            yield problem.status, None
            return
        sub: dict[str, Any] = {}

        def _remember(e: Any) -> None:
            sub["assoc"] = e.assoc

        handlers = TUNING_HANDLERS + [(evt.EVT_ACCEPTED, _remember)]
        log.info("c_move", level=level, instances=len(records), destination=destination)
        QR_REQUESTS.labels("move", "ok").inc()
        QR_MATCHES.labels("move").inc(len(records))
        yield peer.host, peer.port, {"contexts": contexts, "evt_handlers": handlers, **tls}
        yield len(records)
        yield from self._datasets(records, event, lambda: list(sub["assoc"].accepted_contexts) if "assoc" in sub else [])


def _fit_to_contexts(ds: Dataset, accepted: list[PresentationContext]) -> Dataset:
    """Decompress an instance whose compressed syntax the receiver did not accept but which it can take
    uncompressed; everything else goes as stored (pynetdicom converts between uncompressed syntaxes)."""
    ts = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    if not ts.is_compressed or not accepted:
        return ds
    mine = [cx for cx in accepted if cx.abstract_syntax == ds.SOPClassUID]
    if any(cx.transfer_syntax[0] == ts for cx in mine):
        return ds
    if any(not UID(cx.transfer_syntax[0]).is_compressed for cx in mine):
        try:
            ds.decompress()
        except Exception as exc:
            log.warning("retrieve_decompress_failed", error=type(exc).__name__)
    return ds
