"""Queries over the store's index, free of any network protocol: levels, keys, matching, computed values.

The C-FIND SCP (:mod:`service.dicom.qr`) answers with it, and so can any other query interface over the
same archive (a DICOMweb QIDO-RS would take the same keys): it takes an identifier dataset and a level
and returns the response identifiers.

What it implements (PS3.4 C.2.2.2, C.3, C.4.1.2, C.6):

* Levels PATIENT, STUDY, SERIES, IMAGE. Keys of the query level and above are matched. An attribute of a
  lower level (C.4.1.2.1) has no value at the query level: it is answered empty, and a non-universal
  value for it matches nothing (an empty value matches only universal keys), as in Orthanc. Higher-level
  unique keys narrow the match when present and are not demanded, so relational-minded SCUs (Orthanc)
  work too.
* Matching: single value, universal (empty or ``*``), wildcard ``*``/``?`` (C.2.2.2.4), list of UIDs and
  value lists (C.2.2.2.2, C.2.2.2.8), range of dates and times (C.2.2.2.5), sequence matching
  (C.2.2.2.6). Person names match without regard to case and to trailing empty components.
* Keys the index holds are matched in SQL; other attributes are read from a stored header of the
  matched entity (the first of its files by path, so the answer is the same at every query). Each such
  attribute has the level of the Information Entity whose module holds it (PS3.3 A.1, the keys of PS3.4
  C.6.1.1), so ImageComments asked at STUDY level is a lower-level key as above, never taken from an
  arbitrary instance. Modality at STUDY level is one too; Modalities in Study (0008,0061) is the
  study-level key for it.
* Sequence keys (C.2.2.2.6): a sequence with no item, or with one empty item, asks for the whole
  sequence, returned with every item as stored; an item with keys matches when at least one stored item
  matches every non-empty item key, and the response holds the matching items with the requested item
  keys. A sequence the instance does not have is answered empty (zero items).
* Computed keys: Number of Patient/Study/Series Related Studies, Series and Instances, Modalities in
  Study, SOP Classes in Study (the additional keys of PS3.4 C.3.4 and C.6.1.1.x, each an attribute of its
  own level's entity: asked at a lower level, as relational SCUs do, they answer for the patient, study
  or series that holds the match, the way any other higher-level attribute does), Instance
  Availability, Retrieve AE Title, and Synthetic Data (0008,001C):
  YES for an entity with at least one synthetic instance (made here, or received with Synthetic Data
  YES), NO for every other, so a filter for ``NO`` finds the real studies.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive.header_cache import HEADERS
from service.archive.backends import SQLITE, Dialect
from service.archive.index import INSTANCE_VIEW

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
RANK = {lvl: n for n, lvl in enumerate(LEVELS)}
UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}
_GROUP_KEY = {PATIENT: "patient_id", STUDY: "study_uid", SERIES: "series_uid", IMAGE: "sop_instance_uid"}


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

# Attributes read from a stored header, by the Information Entity of their module (PS3.3 A.1 and the
# optional keys of PS3.4 C.6.1.1.2-4); every other attribute belongs to the instance (IMAGE level).
HEADER_LEVELS: dict[str, str] = {
    **dict.fromkeys((
        "IssuerOfPatientID", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthTime", "EthnicGroup",
        "PatientComments", "PatientSpeciesDescription", "PatientBreedDescription", "ResponsiblePerson",
        "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    ), PATIENT),
    **dict.fromkeys((
        "PatientAge", "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
        "AdmittingDiagnosesDescription", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
        "ProcedureCodeSequence", "ReferencedStudySequence", "IssuerOfAccessionNumberSequence",
        "ReferringPhysicianIdentificationSequence", "RequestingService", "ReasonForPerformedProcedureCodeSequence",
    ), STUDY),
    **dict.fromkeys((
        "Manufacturer", "ManufacturerModelName", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
        "StationName", "DeviceSerialNumber", "SoftwareVersions", "ProtocolName", "OperatorsName",
        "PerformingPhysicianName", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "PerformedProcedureStepID", "PerformedProcedureStepDescription", "RequestAttributesSequence",
        "ReferencedPerformedProcedureStepSequence", "PatientPosition", "FrameOfReferenceUID",
    ), SERIES),
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
# Keys with no matching (or their own), answered the same way at every level.
_PROTOCOL_KEYS = frozenset({"QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet"})
# Keys with a value at every level (computed for the whole matched entity).
_EVERY_LEVEL = _PROTOCOL_KEYS | {"SyntheticData"}


def level_of(keyword: str) -> str:
    """The Query/Retrieve level an attribute belongs to (IMAGE for any instance-level attribute)."""
    if keyword in ATTRIBUTES:
        return ATTRIBUTES[keyword].level
    if keyword in _EVERY_LEVEL:
        return PATIENT
    if keyword in COMPUTED:
        return COMPUTED[keyword]
    return HEADER_LEVELS.get(keyword, IMAGE)


class QueryError(Exception):
    """A query that cannot be answered; ``status`` is the DICOM status to send (PS3.4 Table C.4-1)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status = status_code


# -- matching (PS3.4 C.2.2.2) ----------------------------------------------------------------------------


def values_of(query: str) -> list[str]:
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
    """Does ``value`` match the C-FIND key ``query`` of this VR? (PS3.4 C.2.2.2, used where SQL cannot.)

    A multi-valued ``value`` matches when one of its values does.
    """
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return any(match_value(query, v, vr) for v in value) if len(value) else match_value(query, None, vr)
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
    candidates = values_of(query) if "\\" in query else [query]
    for q in candidates:
        if vr == "PN":
            pattern, subject = _pn_norm(q), _pn_norm(text)
            if (fnmatch.fnmatchcase(subject, _literal_brackets(pattern)) if _is_wild(pattern) else subject == pattern):
                return True
        elif vr == "TM":
            # A single time matches everything within its own precision: "1015" matches 10:15:00-10:15:59.
            if text and _tm_key(q, False) <= _tm_key(text, False) <= _tm_key(q, True):
                return True
        elif vr in ("IS", "US", "SS", "UL", "SL", "DS", "FL", "FD"):
            try:
                if text != "" and float(q) == float(text):
                    return True
            except ValueError:
                continue
        elif _is_wild(q) and vr != "UI":
            if fnmatch.fnmatchcase(text.strip(), _literal_brackets(q)):
                return True
        elif text.strip() == q.strip():
            return True
    return False


def _element(ds: Dataset, keyword: str) -> pydicom.DataElement | None:
    """The element itself (``Dataset.get`` gives only its value)."""
    return ds[keyword] if keyword in ds else None


def item_matches(key_item: Dataset, candidate: Dataset) -> bool:
    """Does one stored item match every non-empty item key (PS3.4 C.2.2.2.6)? Nested sequences recurse."""
    for elem in key_item:
        if not elem.keyword:
            continue
        if elem.VR == "SQ":
            if not sequence_matches(elem.value, _element(candidate, elem.keyword)):
                return False
            continue
        query = element_text(elem)
        if query in ("", "*"):
            continue
        stored = _element(candidate, elem.keyword)
        if not match_value(query, None if stored is None else stored.value, elem.VR):
            return False
    return True


def _has_conditions(key_items: Any) -> bool:
    for item in key_items or []:
        for elem in item:
            if elem.VR == "SQ":
                if _has_conditions(elem.value):
                    return True
            elif element_text(elem) not in ("", "*"):
                return True
    return False


def sequence_matches(key_items: Any, stored: Any) -> bool:
    """Sequence matching (PS3.4 C.2.2.2.6): universal without conditions, else one stored item must match."""
    if not _has_conditions(key_items):
        return True
    stored_items = stored.value if isinstance(stored, pydicom.DataElement) else stored
    return any(item_matches(key_items[0], item) for item in stored_items or [])


def sequence_answer(key_items: Any, stored: Any) -> Sequence:
    """The response value of a sequence key (PS3.4 C.2.2.2.6, C.4.1.1.3.2).

    No item, or one empty item: every stored item, whole. An item with keys: the stored items that match
    it, each holding the requested item keys (with their stored value, or empty).
    """
    stored_items = list((stored.value if isinstance(stored, pydicom.DataElement) else stored) or [])
    if not key_items or all(len(item) == 0 for item in key_items):
        return Sequence([copy.deepcopy(item) for item in stored_items])
    key_item = key_items[0]
    out = []
    for item in stored_items:
        if not item_matches(key_item, item):
            continue
        answer = Dataset()
        for elem in key_item:
            if not elem.keyword:
                continue
            value = _element(item, elem.keyword)
            if elem.VR == "SQ":
                setattr(answer, elem.keyword, sequence_answer(elem.value, value))
            elif value is None:
                answer.add_new(elem.tag, elem.VR, None)
            else:
                answer.add(copy.deepcopy(value))
        out.append(answer)
    return Sequence(out)


def sql_condition(column: str, query: str, vr: str, dialect: Dialect = SQLITE) -> tuple[str, list[Any]] | None:
    """An SQL condition over ``v.<column>`` for this key, or None when it is matched in Python (or universal).

    ``dialect``: the index's SQL dialect (wildcards are GLOB in SQLite, LIKE in PostgreSQL).
    """
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
    values = values_of(query) if "\\" in query else [query]
    if vr in ("IS", "US"):
        ints = []
        for v in values:
            try:
                ints.append(int(float(v)))
            except ValueError:
                pass
        if not ints:
            return "1 = 0", []
        return f"{col} IN ({', '.join('?' for _ in ints)})", ints
    if vr != "UI" and any(_is_wild(v) for v in values):
        return " OR ".join(dialect.wildcard(f"COALESCE({col}, '')") for _ in values), [dialect.wildcard_pattern(v.strip()) for v in values]
    values = [v.strip() for v in values]
    return f"{col} IN ({', '.join('?' for _ in values)})", values


def element_text(elem: Any) -> str:
    """A key's value as C-FIND text (multiple values joined with a backslash)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


# -- the engine ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PostKey:
    """A key matched in Python after the SQL: computed, read from a header, or a sequence."""

    keyword: str
    query: Any  # text, or the key's items for a sequence
    vr: str


class QueryEngine:
    """Answers identifiers at a level over one store's index.

    ``synthetic_only`` hides every entity that is not synthetic; ``max_results`` bounds the answer (0: no
    limit); ``retrieve_ae_title`` is the Retrieve AE Title (0008,0054) of every answer.
    """

    def __init__(self, index: Any, store_root: Path, retrieve_ae_title: str, synthetic_only: bool = False, max_results: int = 0):
        self.index = index
        self.store_root = Path(store_root)
        self.retrieve_ae_title = retrieve_ae_title
        self.synthetic_only = synthetic_only
        self.max_results = max_results
        self.truncated = False
        self._aggregates: dict[tuple[str, Any], Any] = {}
        self.dialect: Dialect = getattr(index, "dialect", SQLITE)

    def find(self, identifier: Dataset, level: str) -> list[Dataset]:
        """The response identifiers for a query at ``level`` (at most ``max_results``; ``truncated`` says so)."""
        return list(self.iter_find(identifier, level))

    def iter_find(self, identifier: Dataset, level: str) -> Iterator[Dataset]:
        keys = [elem for elem in identifier if elem.keyword and elem.tag.group != 0x0000 and not elem.tag.is_private]
        where, params, post = self._conditions(keys, level)
        headers: dict[str, Dataset] = {}
        self._aggregates = {}
        sent = 0
        self.truncated = False
        for row in self._rows(level, where, params):
            if not all(self._post_match(key, row, level, headers) for key in post):
                continue
            yield self._response(keys, level, row, headers)
            sent += 1
            if self.max_results and sent >= self.max_results:
                self.truncated = True
                return

    # -- conditions --------------------------------------------------------------------------------------

    def _conditions(self, keys: list, level: str) -> tuple[list[str], list[Any], list[_PostKey]]:
        where: list[str] = []
        params: list[Any] = []
        post: list[_PostKey] = []
        if self.synthetic_only:
            where.append("v.synthetic = 1")
        for elem in keys:
            kw = elem.keyword
            if kw in _PROTOCOL_KEYS:
                continue
            conditional = _has_conditions(elem.value) if elem.VR == "SQ" else element_text(elem) not in ("", "*")
            if not conditional:
                continue
            if RANK[level_of(kw)] > RANK[level]:
                # An attribute of a lower level has no value at this one (it is answered empty), and an empty
                # value matches only universal keys (PS3.4 C.2.2.2.1): nothing matches, as in Orthanc.
                where.append("1 = 0")
                continue
            if elem.VR == "SQ":
                post.append(_PostKey(kw, elem.value, "SQ"))
                continue
            query = element_text(elem)
            if kw == "SyntheticData":
                if query.strip().upper() in ("YES", "NO"):
                    where.append(_synthetic_condition(level, query.strip().upper() == "YES"))
                else:
                    post.append(_PostKey(kw, query, "CS"))
                continue
            if kw == "ModalitiesInStudy":
                mods = [m.strip() for m in values_of(query) if m.strip()]
                if not mods:
                    continue  # only backslashes: universal
                where.append(f"v.study_uid IN (SELECT study_uid FROM series WHERE modality IN ({', '.join('?' for _ in mods)}))")
                params += mods
                continue
            if kw in COMPUTED:
                continue  # counts are return keys only
            attr = ATTRIBUTES.get(kw)
            if attr is None:
                post.append(_PostKey(kw, query, elem.VR))
                continue
            cond = sql_condition(attr.column, query, attr.vr, self.dialect)
            if cond is None:
                post.append(_PostKey(kw, query, attr.vr))
            else:
                where.append(f"({cond[0]})")
                params += cond[1]
        return where, params, post

    def _post_match(self, key: _PostKey, row: Any, level: str, headers: dict[str, Dataset]) -> bool:
        if key.vr == "SQ":
            return sequence_matches(key.query, self._header_element(row, key.keyword, headers))
        if key.keyword == "SyntheticData":
            return match_value(key.query, _synthetic_data(row), "CS")
        if key.keyword in ATTRIBUTES:
            return match_value(key.query, row[ATTRIBUTES[key.keyword].column], key.vr)
        elem = self._header_element(row, key.keyword, headers)
        return match_value(key.query, None if elem is None else elem.value, key.vr)

    # -- rows ---------------------------------------------------------------------------------------------

    def _rows(self, level: str, where: list[str], params: list[Any]) -> Any:
        d = self.dialect
        if level == IMAGE:
            cols = [f"v.{a.column} AS {a.column}" for a in ATTRIBUTES.values()]
            cols += ["v.synthetic AS any_synthetic", "v.path AS rep_path", "1 AS n_instances"]
            group, order = "", "v.study_uid, v.series_uid, v.instance_number, v.sop_instance_uid"
        else:
            # Every attribute of the query level and above is the same on each row of the group.
            cols = [f"{d.any_value('v.' + a.column)} AS {a.column}" for a in ATTRIBUTES.values() if RANK[a.level] <= RANK[level]]
            cols += [
                "MAX(v.synthetic) AS any_synthetic", "MIN(v.path) AS rep_path", "COUNT(*) AS n_instances",
                "COUNT(DISTINCT v.study_uid) AS n_studies", "COUNT(DISTINCT v.series_uid) AS n_series",
                f"{d.group_concat_distinct('v.modality')} AS modalities", f"{d.group_concat_distinct('v.sop_class_uid')} AS sop_classes",
            ]
            group = f" GROUP BY v.{_GROUP_KEY[level]}"
            # The answer's own columns (not v's): PostgreSQL sorts a group only by what it outputs.
            order = {
                PATIENT: "patient_id",
                STUDY: "study_date, study_time, study_uid",
                SERIES: "series_number, series_uid",
            }[level]
        sql = f"SELECT {', '.join(cols)} FROM ({INSTANCE_VIEW}) v" + (f" WHERE {' AND '.join(where)}" if where else "") + group + f" ORDER BY {order}"
        # A cursor, not a list: rows are read as matches are made, so max_results also bounds memory.
        return self.index.reader.execute(sql, params)

    def _aggregate(self, level: str, key: Any) -> Any:
        """Counts, modalities and SOP classes of one entity at ``level`` (the one holding a lower-level match),
        over the instances this engine may show (``synthetic_only``); cached for the query."""
        cached = self._aggregates.get((level, key))
        if cached is None:
            where = [f"v.{_GROUP_KEY[level]} = ?"] + (["v.synthetic = 1"] if self.synthetic_only else [])
            sql = (
                "SELECT COUNT(*) AS n_instances, COUNT(DISTINCT v.study_uid) AS n_studies, COUNT(DISTINCT v.series_uid) AS n_series,"
                f" {self.dialect.group_concat_distinct('v.modality')} AS modalities,"
                f" {self.dialect.group_concat_distinct('v.sop_class_uid')} AS sop_classes"
                f" FROM ({INSTANCE_VIEW}) v WHERE {' AND '.join(where)}"
            )
            cached = self.index.reader.execute(sql, [key]).fetchone()
            if len(self._aggregates) > 1024:
                self._aggregates.clear()
            self._aggregates[(level, key)] = cached
        return cached

    def _header(self, row: Any, cache: dict[str, Dataset]) -> Dataset:
        """The stored header that answers for the matched entity: its first file by path (deterministic)."""
        path = row["rep_path"]
        ds = cache.get(path)
        if ds is None:
            try:
                ds = HEADERS.get(self.store_root / path)  # shared, read-only: callers copy what they answer
            except Exception:  # a damaged file answers with empty values, it does not end the query
                ds = Dataset()
            if len(cache) > 256:
                cache.clear()
            cache[path] = ds
        return ds

    def _header_element(self, row: Any, keyword: str, cache: dict[str, Dataset]) -> Any:
        return _element(self._header(row, cache), keyword)

    # -- responses -----------------------------------------------------------------------------------------

    def _response(self, keys: list, level: str, row: Any, headers: dict[str, Dataset]) -> Dataset:
        ds = Dataset()
        for elem in keys:
            kw = elem.keyword
            if elem.VR == "SQ":
                stored = self._header_element(row, kw, headers) if RANK[level_of(kw)] <= RANK[level] else None
                setattr(ds, kw, sequence_answer(elem.value, stored))
                continue
            value = self._value(kw, elem.VR, level, row, headers)
            if isinstance(value, pydicom.DataElement):
                ds.add(copy.deepcopy(value))
                continue
            known = _dictionary_entry(kw)
            if known is not None and known[0] not in ds:
                ds[known[0]] = pydicom.DataElement(known[0], known[1], value)  # what setattr does, without its lookups
            else:
                setattr(ds, kw, value)
        ds.QueryRetrieveLevel = level
        # Where to retrieve the match from (PS3.4 C.4.1.1.3.2): always sent, as other archives do.
        ds.RetrieveAETitle = self.retrieve_ae_title
        if not _is_ascii(ds):
            ds.SpecificCharacterSet = "ISO_IR 192"
        elif "SpecificCharacterSet" in ds:
            ds.SpecificCharacterSet = "ISO_IR 100"
        return ds

    def _value(self, kw: str, vr: str, level: str, row: Any, headers: dict[str, Dataset]) -> Any:
        if kw == "QueryRetrieveLevel":
            return level
        if kw == "RetrieveAETitle":
            return self.retrieve_ae_title
        if kw == "InstanceAvailability":
            return "ONLINE"
        if kw == "SpecificCharacterSet":
            return "ISO_IR 100"
        if kw == "SyntheticData":
            return _synthetic_data(row)
        if RANK[level_of(kw)] > RANK[level]:
            return None  # an attribute of a lower level (PS3.4 C.4.1.2.1): empty, not an arbitrary instance's
        attr = ATTRIBUTES.get(kw)
        if attr is not None:
            value = row[attr.column]
            if value in (None, ""):
                return None
            return str(value) if attr.vr == "IS" else value
        if kw in COMPUTED:
            owner = COMPUTED[kw]
            # At its own level the matched row is the entity; at a lower level (ModalitiesInStudy asked at
            # SERIES or IMAGE level) the value is that of the study (patient, series) holding the match.
            counts = row if owner == level else self._aggregate(owner, row[_GROUP_KEY[owner]])
            return {
                "NumberOfPatientRelatedStudies": lambda: str(counts["n_studies"]),
                "NumberOfPatientRelatedSeries": lambda: str(counts["n_series"]),
                "NumberOfPatientRelatedInstances": lambda: str(counts["n_instances"]),
                "NumberOfStudyRelatedSeries": lambda: str(counts["n_series"]),
                "NumberOfStudyRelatedInstances": lambda: str(counts["n_instances"]),
                "NumberOfSeriesRelatedInstances": lambda: str(counts["n_instances"]),
                "ModalitiesInStudy": lambda: [m for m in (counts["modalities"] or "").split(",") if m] or None,
                "SOPClassesInStudy": lambda: [c for c in (counts["sop_classes"] or "").split(",") if c] or None,
            }[kw]()
        elem = self._header_element(row, kw, headers)
        if elem is None or elem.value in ("", None):
            return None
        return elem


# The entities with at least one synthetic instance, by level (what _synthetic_data answers YES for).
_SYNTHETIC_ENTITIES = {
    PATIENT: "v.patient_id IN (SELECT st.patient_id FROM instances i JOIN studies st ON st.study_uid = i.study_uid WHERE i.synthetic = 1)",
    STUDY: "v.study_uid IN (SELECT study_uid FROM instances WHERE synthetic = 1)",
    SERIES: "v.series_uid IN (SELECT series_uid FROM instances WHERE synthetic = 1)",
    IMAGE: "v.synthetic = 1",
}


@functools.lru_cache(maxsize=1024)
def _dictionary_entry(keyword: str) -> tuple[int, str] | None:
    """(tag, dictionary VR) of a keyword, as ``Dataset.__setattr__`` finds them; None for any other name."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else (tag, dictionary_VR(tag))


def _synthetic_condition(level: str, synthetic: bool) -> str:
    """SQL for Synthetic Data YES (``synthetic``) or NO at ``level``, the same rule as :func:`_synthetic_data`."""
    condition = _SYNTHETIC_ENTITIES[level]
    return condition if synthetic else f"NOT ({condition})"


def _synthetic_data(row: Any) -> str:
    """Synthetic Data (0008,001C) of a matched entity, computed from the index's flag for every entity."""
    return "YES" if row["any_synthetic"] else "NO"


def _is_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if not all(_is_ascii(item) for item in elem.value):
                return False
            continue
        value = elem.value
        for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]):
            if isinstance(v, (str, pydicom.valuerep.PersonName)) and not str(v).isascii():
                return False
    return True


__all__ = [
    "ATTRIBUTES", "COMPUTED", "HEADER_LEVELS", "IMAGE", "LEVELS", "PATIENT", "RANK", "SERIES", "STUDY", "UNIQUE_KEY",
    "QueryEngine", "QueryError", "element_text", "level_of", "match_value", "sequence_answer", "sequence_matches",
    "sql_condition", "values_of",
]
