"""Query/Retrieve SCP on the service's one AE (PS3.4 Annex C): Patient Root and Study Root C-FIND, C-GET, C-MOVE.

Viewers find synthetic studies here, and received (de-identified) ones unless ``qr.synthetic_only`` hides
everything that is not synthetic. The index answers the queries:

* C-FIND (C.4.1) at PATIENT (Patient Root only), STUDY, SERIES and IMAGE level. Matching follows PS3.4
  C.2.2.2: single value, universal (empty), wildcard ``*``/``?`` (C.2.2.2.4), list of UIDs and value lists
  (C.2.2.2.2, C.2.2.2.8), and range matching of dates and times (C.2.2.2.5). Person names match without
  regard to case and to trailing empty components. Keys of the query level and above are matched; the
  unique keys of higher levels are used when present (hierarchical) and not demanded (so relational-minded
  SCUs such as Orthanc work too). Every requested key comes back, with its value or empty; the usual
  additional keys are computed: Number of Patient/Study/Series Related Studies, Series, Instances,
  Modalities in Study, SOP Classes in Study, plus Retrieve AE Title and Instance Availability.
  Requested attributes the index does not hold are read from a stored header.
* C-GET (C.4.3) sends the matching instances back over the same association (the requestor takes the SCP
  role for their Storage SOP Classes, PS3.7 D.3.3.4); compressed instances the requestor did not accept
  are decompressed.
* C-MOVE (C.4.2) sends them to a Move Destination that is a ``dicom.peers`` entry with a port, on a new
  association negotiated like the outbox's (stored syntax first, uncompressed fallback, TCP_NODELAY).
  An unknown destination gets 0xA801.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
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

from service.config import Config, ConfigError
from service.dicom import status
from service.dicom.index import INSTANCE_VIEW
from service.dicom.scu import TUNING_HANDLERS, storage_contexts_for
from service.dicom.tls import client_args
from service.logs import get_logger

QR_REQUESTS = Counter("synthpacs_qr_requests_total", "Query/Retrieve requests, by operation and outcome", ["operation", "outcome"])
QR_MATCHES = Counter("synthpacs_qr_matches_total", "C-FIND matches returned and C-GET/C-MOVE instances sent", ["operation"])

log = get_logger("qr")

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
_RANK = {lvl: n for n, lvl in enumerate(LEVELS)}
_GROUP_KEY = {PATIENT: "patient_id", STUDY: "study_uid", SERIES: "series_uid", IMAGE: "sop_instance_uid"}
_UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}

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


@dataclass(frozen=True)
class Attribute:
    """A matching/return key the index holds: its level (PS3.4 C.6.1.1 / C.6.2.1) and column."""

    level: str
    column: str
    vr: str


ATTRIBUTES: dict[str, Attribute] = {
    "PatientID": Attribute(PATIENT, "patient_id", "LO"),
    "PatientName": Attribute(PATIENT, "patient_name", "PN"),
    "PatientBirthDate": Attribute(PATIENT, "patient_birth_date", "DA"),
    "PatientSex": Attribute(PATIENT, "patient_sex", "CS"),
    "StudyInstanceUID": Attribute(STUDY, "study_uid", "UI"),
    "StudyDate": Attribute(STUDY, "study_date", "DA"),
    "StudyTime": Attribute(STUDY, "study_time", "TM"),
    "StudyDescription": Attribute(STUDY, "study_description", "LO"),
    "AccessionNumber": Attribute(STUDY, "accession_number", "SH"),
    "StudyID": Attribute(STUDY, "study_id", "SH"),
    "ReferringPhysicianName": Attribute(STUDY, "referring_physician_name", "PN"),
    "SeriesInstanceUID": Attribute(SERIES, "series_uid", "UI"),
    "Modality": Attribute(SERIES, "modality", "CS"),
    "SeriesNumber": Attribute(SERIES, "series_number", "IS"),
    "SeriesDescription": Attribute(SERIES, "series_description", "LO"),
    "BodyPartExamined": Attribute(SERIES, "body_part_examined", "CS"),
    "Laterality": Attribute(SERIES, "laterality", "CS"),
    "SeriesDate": Attribute(SERIES, "series_date", "DA"),
    "SeriesTime": Attribute(SERIES, "series_time", "TM"),
    "SOPInstanceUID": Attribute(IMAGE, "sop_instance_uid", "UI"),
    "SOPClassUID": Attribute(IMAGE, "sop_class_uid", "UI"),
    "InstanceNumber": Attribute(IMAGE, "instance_number", "IS"),
    "Rows": Attribute(IMAGE, "rows", "US"),
    "Columns": Attribute(IMAGE, "columns", "US"),
    "BitsStored": Attribute(IMAGE, "bits_stored", "US"),
    "PhotometricInterpretation": Attribute(IMAGE, "photometric_interpretation", "CS"),
    "NumberOfFrames": Attribute(IMAGE, "number_of_frames", "IS"),
    "ViewPosition": Attribute(IMAGE, "view_position", "CS"),
    "ImageLaterality": Attribute(IMAGE, "image_laterality", "CS"),
    "BurnedInAnnotation": Attribute(IMAGE, "burned_in_annotation", "CS"),
}

# Additional keys computed per match (PS3.4 C.3.4 / C.6.1.1.x), by the level where they have a value.
COMPUTED: dict[str, str] = {
    "NumberOfPatientRelatedStudies": PATIENT,
    "NumberOfPatientRelatedSeries": PATIENT,
    "NumberOfPatientRelatedInstances": PATIENT,
    "NumberOfStudyRelatedSeries": STUDY,
    "NumberOfStudyRelatedInstances": STUDY,
    "ModalitiesInStudy": STUDY,
    "SOPClassesInStudy": STUDY,
    "NumberOfSeriesRelatedInstances": SERIES,
}
# Keys answered the same way at every level.
CONSTANT_KEYS = frozenset({"QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet", "SyntheticData"})


class QueryError(Exception):
    """A query that cannot be answered; ``status`` is the DICOM status to send (PS3.4 Table C.4-1)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status = status_code


# -- matching (PS3.4 C.2.2.2) ----------------------------------------------------------------------------


def _values(query: str) -> list[str]:
    return [v for v in query.split("\\")]


def _is_wild(text: str) -> bool:
    return "*" in text or "?" in text


def _literal_brackets(text: str) -> str:
    """DICOM wildcards are only '*' and '?': the '[' of SQLite GLOB and fnmatch must be made literal."""
    return text.replace("[", "[[]")


def _tm_key(text: str, end: bool) -> str:
    """HHMMSS.FFFFFF with the precision missing from ``text`` filled in (low for starts, high for ends)."""
    text = text.strip().replace(":", "")
    main, _, frac = text.partition(".")
    fill_main = "235959" if end else "000000"
    main = (main + fill_main[len(main):])[:6]
    frac = (frac + ("999999" if end else "000000")[len(frac):])[:6] if frac or end else "000000"
    return f"{main}.{frac}"


def _pn_norm(text: str) -> str:
    return "=".join(group.rstrip("^ ") for group in str(text).upper().split("=")).rstrip("=")


def match_value(query: str, value: Any, vr: str) -> bool:
    """Does ``value`` match the C-FIND key ``query`` of this VR? (PS3.4 C.2.2.2, used where SQL cannot.)"""
    query = str(query).strip() if vr != "PN" else str(query)
    if query in ("", "*"):
        return True
    text = "" if value is None else str(value)
    if vr in ("DA", "TM", "DT") and "-" in query:
        low, _, high = query.partition("-")
        if not text:
            return False
        if vr == "TM":
            key = _tm_key(text, end=False)
            return (not low or key >= _tm_key(low, False)) and (not high or key <= _tm_key(high, True))
        return (not low or text >= low.strip()) and (not high or text[: len(high.strip())] <= high.strip())
    candidates = _values(query) if "\\" in query else [query]
    for q in candidates:
        if vr == "PN":
            pattern, subject = _pn_norm(q), _pn_norm(text)
            if (fnmatch.fnmatchcase(subject, _literal_brackets(pattern)) if _is_wild(pattern) else subject == pattern):
                return True
        elif vr == "TM":
            # A single time matches everything within its own precision: "1015" matches 10:15:00-10:15:59.
            if text and _tm_key(q, False) <= _tm_key(text, False) <= _tm_key(q, True):
                return True
        elif vr in ("IS", "US"):
            try:
                if text != "" and int(float(q)) == int(float(text)):
                    return True
            except ValueError:
                continue
        elif _is_wild(q) and vr != "UI":
            if fnmatch.fnmatchcase(text, _literal_brackets(q)):
                return True
        elif text == q.strip():
            return True
    return False


def _sql_condition(column: str, query: str, vr: str) -> tuple[str, list[Any]] | None:
    """An SQL condition over ``v.<column>`` for this key, or None when it is matched in Python (or universal)."""
    query = str(query).strip()
    if query in ("", "*") or vr in ("PN", "TM"):
        return None
    col = f"v.{column}"
    if vr in ("DA", "DT") and "-" in query and "\\" not in query:
        low, _, high = query.partition("-")
        parts, params = [f"COALESCE({col}, '') != ''"], []
        if low.strip():
            parts.append(f"{col} >= ?")
            params.append(low.strip())
        if high.strip():
            parts.append(f"substr({col}, 1, {len(high.strip())}) <= ?")
            params.append(high.strip())
        return " AND ".join(parts), params
    values = _values(query) if "\\" in query else [query]
    if vr in ("IS", "US"):
        ints = []
        for v in values:
            try:
                ints.append(int(float(v)))
            except ValueError:
                pass
        if not ints:
            return "0", []
        return f"{col} IN ({', '.join('?' for _ in ints)})", ints
    if vr != "UI" and any(_is_wild(v) for v in values):
        return " OR ".join(f"COALESCE({col}, '') GLOB ?" for _ in values), [_literal_brackets(v.strip()) for v in values]
    values = [v.strip() for v in values]
    return f"{col} IN ({', '.join('?' for _ in values)})", values


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

    def find(self, identifier: Dataset, level: str) -> list[Dataset]:
        """The response identifiers for a C-FIND at ``level``."""
        keys = [elem for elem in identifier if elem.keyword and elem.tag.group not in (0x0000,) and not elem.tag.is_private]
        where, params, post = self._conditions(keys, level)
        rows = self._rows(level, where, params)
        out = []
        headers: dict[str, Dataset] = {}
        limit = self.cfg.qr.max_results
        for row in rows:
            ok = True
            for keyword, query, vr in post:
                value = row[ATTRIBUTES[keyword].column] if keyword in ATTRIBUTES else self._header_value(row, keyword, headers)
                if not match_value(query, value, vr):
                    ok = False
                    break
            if not ok:
                continue
            out.append(self._response(keys, level, row, headers))
            if limit and len(out) >= limit:
                log.warning("c_find_truncated", level=level, max_results=limit)
                break
        return out

    def _level(self, identifier: Dataset, root: str) -> str:
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(status.QR_IDENTIFIER_MISMATCH, f"Query/Retrieve Level {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
        if level == PATIENT and root == STUDY_ROOT:
            raise QueryError(status.QR_IDENTIFIER_MISMATCH, "the Study Root model has no PATIENT level (PS3.4 C.6.2)")
        return level

    def _conditions(self, keys: list, level: str) -> tuple[list[str], list[Any], list[tuple[str, str, str]]]:
        where: list[str] = []
        params: list[Any] = []
        post: list[tuple[str, str, str]] = []
        if self.cfg.qr.synthetic_only:
            where.append("v.synthetic = 1")
        for elem in keys:
            kw = elem.keyword
            if elem.VR == "SQ" or kw in ("QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet"):
                continue
            query = _element_text(elem)
            if query in ("", "*"):
                continue
            if kw == "SyntheticData":
                where.append("v.synthetic = ?" if query.upper() in ("YES", "NO") else "0")
                params += [1 if query.upper() == "YES" else 0] if query.upper() in ("YES", "NO") else []
                continue
            if kw == "ModalitiesInStudy":
                mods = [m.strip() for m in _values(query) if m.strip()]
                where.append(f"v.study_uid IN (SELECT study_uid FROM series WHERE modality IN ({', '.join('?' for _ in mods)}))")
                params += mods
                continue
            if kw in COMPUTED:
                continue  # counts are return keys only
            attr = ATTRIBUTES.get(kw)
            if attr is None:
                # Not in the index: matched against a stored header (only at the query level and above is meaningful).
                post.append((kw, query, elem.VR))
                continue
            if _RANK[attr.level] > _RANK[level]:
                continue  # keys below the query level are not matching keys (PS3.4 C.4.1.2.1)
            cond = _sql_condition(attr.column, query, attr.vr)
            if cond is None:
                post.append((kw, query, attr.vr))
            else:
                where.append(f"({cond[0]})")
                params += cond[1]
        return where, params, post

    def _rows(self, level: str, where: list[str], params: list[Any]) -> Any:
        cols = [f"v.{a.column} AS {a.column}" for a in ATTRIBUTES.values() if _RANK[a.level] <= _RANK[level]]
        if level == IMAGE:
            cols += ["v.synthetic AS any_synthetic", "v.path AS rep_path", "1 AS n_instances"]
            group, order = "", "v.study_uid, v.series_uid, v.instance_number, v.sop_instance_uid"
        else:
            cols += [
                "MAX(v.synthetic) AS any_synthetic", "MIN(v.path) AS rep_path", "COUNT(*) AS n_instances",
                "COUNT(DISTINCT v.study_uid) AS n_studies", "COUNT(DISTINCT v.series_uid) AS n_series",
                "GROUP_CONCAT(DISTINCT v.modality) AS modalities", "GROUP_CONCAT(DISTINCT v.sop_class_uid) AS sop_classes",
            ]
            key = _GROUP_KEY[level]
            group = f" GROUP BY v.{key}"
            order = {
                PATIENT: "v.patient_id",
                STUDY: "v.study_date, v.study_time, v.study_uid",
                SERIES: "v.series_number, v.series_uid",
            }[level]
        sql = f"SELECT {', '.join(cols)} FROM ({INSTANCE_VIEW}) v" + (f" WHERE {' AND '.join(where)}" if where else "") + group + f" ORDER BY {order}"
        # A cursor, not a list: rows are read as matches are made, so max_results also bounds memory.
        return self.index.reader.execute(sql, params)

    def _header_value(self, row: Any, keyword: str, cache: dict[str, Dataset]) -> Any:
        path = row["rep_path"]
        ds = cache.get(path)
        if ds is None:
            try:
                ds = pydicom.dcmread(self.store.root / path, stop_before_pixels=True)
            except Exception:  # a damaged file answers with empty values, it does not end the query
                ds = Dataset()
            if len(cache) > 256:
                cache.clear()
            cache[path] = ds
        elem = ds.get(keyword)
        if elem is None:
            return None
        if isinstance(elem, pydicom.DataElement):
            return elem.value
        return elem

    def _response(self, keys: list, level: str, row: Any, headers: dict[str, Dataset]) -> Dataset:
        ds = Dataset()
        non_ascii = False
        for elem in keys:
            kw = elem.keyword
            value = self._value(kw, elem.VR, level, row, headers)
            if elem.VR == "SQ":
                setattr(ds, kw, value if isinstance(value, list) else [])
                continue
            if isinstance(value, str) and not value.isascii():
                non_ascii = True
            setattr(ds, kw, value)
        ds.QueryRetrieveLevel = level
        # Where to retrieve the match from (PS3.4 C.4.1.1.3.2): always sent, as other archives do.
        ds.RetrieveAETitle = self.cfg.dicom.ae_title
        if non_ascii:
            ds.SpecificCharacterSet = "ISO_IR 192"
        elif "SpecificCharacterSet" in ds:
            ds.SpecificCharacterSet = "ISO_IR 100"
        return ds

    def _value(self, kw: str, vr: str, level: str, row: Any, headers: dict[str, Dataset]) -> Any:
        if kw == "QueryRetrieveLevel":
            return level
        if kw == "RetrieveAETitle":
            return self.cfg.dicom.ae_title
        if kw == "InstanceAvailability":
            return "ONLINE"
        if kw == "SpecificCharacterSet":
            return "ISO_IR 100"
        if kw == "SyntheticData":
            return "YES" if row["any_synthetic"] else None
        attr = ATTRIBUTES.get(kw)
        if attr is not None:
            if _RANK[attr.level] > _RANK[level]:
                return None
            value = row[attr.column]
            if value in (None, ""):
                return None
            return str(value) if attr.vr == "IS" else value
        if kw in COMPUTED:
            if COMPUTED[kw] != level:
                return None
            return {
                "NumberOfPatientRelatedStudies": lambda: str(row["n_studies"]),
                "NumberOfPatientRelatedSeries": lambda: str(row["n_series"]),
                "NumberOfPatientRelatedInstances": lambda: str(row["n_instances"]),
                "NumberOfStudyRelatedSeries": lambda: str(row["n_series"]),
                "NumberOfStudyRelatedInstances": lambda: str(row["n_instances"]),
                "NumberOfSeriesRelatedInstances": lambda: str(row["n_instances"]),
                "ModalitiesInStudy": lambda: [m for m in (row["modalities"] or "").split(",") if m] or None,
                "SOPClassesInStudy": lambda: [c for c in (row["sop_classes"] or "").split(",") if c] or None,
            }[kw]()
        if vr == "SQ":
            return []
        value = self._header_value(row, kw, headers)
        return value if value not in ("",) else None

    # -- C-GET and C-MOVE --------------------------------------------------------------------------------

    def retrieve_records(self, identifier: Dataset, level: str) -> list[Any]:
        """The stored instances a C-GET/C-MOVE identifier asks for (PS3.4 C.4.2.1.4 / C.4.3.1.3)."""
        key = _UNIQUE_KEY[level]
        wanted = [v.strip() for v in _values(_element_text(identifier[key])) if v.strip()] if key in identifier else []
        if not wanted:
            raise QueryError(status.QR_IDENTIFIER_MISMATCH, f"a {level}-level retrieve needs {key} (PS3.4 C.4.2.2.1)")
        column = {PATIENT: "p.patient_id", STUDY: "i.study_uid", SERIES: "i.series_uid", IMAGE: "i.sop_instance_uid"}[level]
        where = [f"{column} IN ({', '.join('?' for _ in wanted)})"]
        params: list[Any] = list(wanted)
        # Higher-level unique keys narrow the match when given (hierarchical retrieve).
        for upper in LEVELS[: _RANK[level]]:
            ukey = _UNIQUE_KEY[upper]
            if ukey in identifier and _element_text(identifier[ukey]).strip():
                col = {PATIENT: "p.patient_id", STUDY: "i.study_uid", SERIES: "i.series_uid"}[upper]
                vals = [v.strip() for v in _values(_element_text(identifier[ukey])) if v.strip()]
                where.append(f"{col} IN ({', '.join('?' for _ in vals)})")
                params += vals
        if self.cfg.qr.synthetic_only:
            where.append("i.synthetic = 1")
        return list(self.index.instances(" AND ".join(where), tuple(params), order="i.study_uid, i.series_uid, i.instance_number"))

    def _retrieve_level(self, event: Any, models: dict[str, str]) -> tuple[Dataset, str]:
        root = models.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        identifier = event.identifier
        return identifier, self._level(identifier, root)

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


def _element_text(elem: Any) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


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
