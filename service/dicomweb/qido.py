"""QIDO-RS, the search transaction (PS3.18 10.6), answered by the same engine as C-FIND.

The query parameters become a C-FIND identifier (PS3.18 8.3.4: ``{attributeID}={value}`` with a keyword or
a tag in hex, dotted paths into sequences, ``includefield``) that :class:`service.archive.query.QueryEngine`
answers, so a QIDO-RS query and the same C-FIND match exactly the same entities with the same rules
(wildcards, ranges, UID lists, sequence matching, Synthetic Data). What is QIDO's own:

* the resources and their levels (10.6.1): ``/studies``, ``/series``, ``/instances``, and the same
  under a study or a series; the UIDs in the path are matching keys;
* the default return attributes of each resource (Tables 10.6.3-3/4/5; the all-series and all-instances
  forms add the levels above), ``includefield`` for more (``all``: every attribute the index and the
  stored headers answer at that level, and the computed keys), ``RetrieveURL`` (0008,1190) on every match;
* UID lists written with commas (8.3.4.1) or backslashes; ``limit``/``offset`` (8.3.4.4); fuzzy matching
  is not offered, and ``fuzzymatching=true`` gets the Warning header of 8.3.4.3 with literal matching;
* a search with no match answers 200 with an empty array (CP-2473; 204 before it);
* more matches than ``qr.max_results`` (the C-FIND bound) or ``dicomweb.default_limit`` when the client
  set no limit: the first ones and the Warning of 8.3.4.4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive.query import ATTRIBUTES, COMPUTED, HEADER_LEVELS, IMAGE, RANK, SERIES, STUDY, UNIQUE_KEY, QueryEngine, element_text
from service.config import Config
from service.dicomweb import dicomjson
from service.dicomweb.errors import BadRequest

# Default return attributes (PS3.18 Tables 10.6.3-3, 10.6.3-4, 10.6.3-5), StudyDescription and
# SeriesDescription being what every study browser shows.
STUDY_DEFAULTS = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy", "ReferringPhysicianName",
    "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
INSTANCE_DEFAULTS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC", "InstanceNumber", "Rows",
    "Columns", "BitsAllocated", "NumberOfFrames",
)
_DEFAULTS = {STUDY: STUDY_DEFAULTS, SERIES: SERIES_DEFAULTS, IMAGE: INSTANCE_DEFAULTS}
_CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
_NUMERIC_BINARY = {"US": int, "SS": int, "UL": int, "SL": int, "UV": int, "SV": int, "FL": float, "FD": float}
# Keys the engine answers for C-FIND's sake that QIDO-RS responses carry only when asked for.
_DIMSE_ONLY = ("QueryRetrieveLevel", "RetrieveAETitle")
FUZZY_WARNING = '299 synthpacs "The fuzzymatching parameter is not supported. Only literal matching has been performed."'
LIMIT_WARNING = '299 synthpacs "The number of results exceeded the maximum supported by the server. Additional results can be requested."'


@dataclass(frozen=True)
class Search:
    """One QIDO-RS resource: the level it searches and the levels whose default attributes it returns."""

    level: str
    defaults_from: tuple[str, ...]


STUDIES = Search(STUDY, (STUDY,))
STUDY_SERIES = Search(SERIES, (SERIES,))
ALL_SERIES = Search(SERIES, (STUDY, SERIES))
SERIES_INSTANCES = Search(IMAGE, (IMAGE,))
STUDY_INSTANCES = Search(IMAGE, (SERIES, IMAGE))
ALL_INSTANCES = Search(IMAGE, (STUDY, SERIES, IMAGE))


@dataclass
class Answer:
    matches: list[dict]
    warnings: list[str] = field(default_factory=list)


@lru_cache(maxsize=4096)
def _tag_of(attribute_id: str) -> int:
    text = attribute_id.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return int(text, 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise BadRequest(f"{attribute_id!r} is neither a DICOM keyword nor a tag in hex (PS3.18 8.3.4.1)")
    return tag


@lru_cache(maxsize=4096)
def _vr_of(tag: int, attribute_id: str) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise BadRequest(f"{attribute_id!r} is not an attribute of the DICOM dictionary") from None
    return vr.split(" or ")[0]


def _value(text: str | None, vr: str, attribute_id: str) -> Any:
    if text is None or text == "":
        return None
    if vr in _NUMERIC_BINARY:
        try:
            return [_NUMERIC_BINARY[vr](v) for v in text.split("\\")] if "\\" in text else _NUMERIC_BINARY[vr](text)
        except ValueError:
            raise BadRequest(f"{attribute_id} takes a number") from None
    if vr == "UI":
        text = text.replace(",", "\\")  # UID lists are comma-separated in QIDO-RS (PS3.18 8.3.4.1)
    return text


def _put(ds: Dataset, path: list[str], text: str | None) -> None:
    """Add the key at ``path`` (attribute ids, sequences before the last) to the identifier ``ds``."""
    head = path[0]
    tag = _tag_of(head)
    vr = _vr_of(tag, head)
    if len(path) == 1:
        if vr == "SQ":
            if text:
                raise BadRequest(f"{head} is a sequence: match on an attribute inside it ({head}.Keyword=value)")
            if tag not in ds:
                ds.add(DataElement(tag, "SQ", Sequence([])))
            return
        ds.add(DataElement(tag, vr, _value(text, vr, head)))
        return
    if vr != "SQ":
        raise BadRequest(f"{head} is not a sequence, so {'.'.join(path)} names nothing")
    if tag not in ds or not ds[tag].value:
        ds.add(DataElement(tag, "SQ", Sequence([Dataset()])))
    _put(ds[tag].value[0], path[1:], text)


def _all_keys(level: str) -> list[str]:
    """What ``includefield=all`` returns at ``level``: every attribute that has a value at this level."""
    keys = [kw for kw, attr in ATTRIBUTES.items() if RANK[attr.level] <= RANK[level] and RANK[attr.level] >= RANK[STUDY]]
    keys += [kw for kw, attr in ATTRIBUTES.items() if attr.level == "PATIENT"]
    keys += [kw for kw, lvl in HEADER_LEVELS.items() if RANK[lvl] <= RANK[level]]
    keys += [kw for kw, lvl in COMPUTED.items() if RANK[STUDY] <= RANK[lvl] <= RANK[level]]
    return keys + ["SyntheticData", "InstanceAvailability", "TimezoneOffsetFromUTC"]


@lru_cache(maxsize=None)
def _default_keys(search: Search) -> dict[int, DataElement]:
    """The empty return keys every search of ``search`` starts from (its default attributes and unique keys).

    Built once: an identifier is a new Dataset over a copy of this dict, and its elements are never changed
    in place (a key of the request replaces the element; a sequence key here has no item to change)."""
    ds = Dataset()
    for keyword in [k for lvl in search.defaults_from for k in _DEFAULTS[lvl]]:
        _put(ds, [keyword], None)
    for lvl in (STUDY, SERIES, IMAGE):
        if RANK[lvl] <= RANK[search.level]:
            _put(ds, [UNIQUE_KEY[lvl]], None)
    return {elem.tag: elem for elem in ds}


def build_identifier(search: Search, path_uids: dict[str, str], params: Iterable[tuple[str, str]]) -> tuple[Dataset, dict[str, Any]]:
    """The C-FIND identifier for a QIDO-RS request, and the request's control parameters."""
    control: dict[str, Any] = {"includefield": [], "limit": None, "offset": 0, "fuzzy": False}
    matching: dict[str, list[str]] = {}
    for name, value in params:
        key = name.strip()
        if key.lower() == "includefield":
            control["includefield"] += [v.strip() for v in value.split(",") if v.strip()]
        elif key.lower() in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError:
                number = -1
            if number < 0:
                raise BadRequest(f"{key.lower()} must be a non-negative integer (PS3.18 8.3.4.4)")
            control[key.lower()] = number
        elif key.lower() == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false (PS3.18 8.3.4.3)")
            control["fuzzy"] = value.strip().lower() == "true"
        else:
            matching.setdefault(key, []).append(value)
    ident = Dataset(dict(_default_keys(search)))
    for field_id in control["includefield"]:
        if field_id.lower() == "all":
            for keyword in _all_keys(search.level):
                if tag_for_keyword(keyword) not in ident:
                    _put(ident, [keyword], None)
            continue
        path = field_id.split(".")
        if _tag_of(path[0]) not in ident or len(path) > 1:
            _put(ident, path, None)
    for key, values in matching.items():
        path = key.split(".")
        _put(ident, path, "\\".join(values))
    for keyword, uid in path_uids.items():
        _put(ident, [keyword], uid)
    return ident, control


def at_most_one_match(search: Search, params: Iterable[tuple[str, str]]) -> bool:
    """Can this search match one entity at most? Its level's unique key (SOP Instance UID for instances...)
    is given once, as one UID without wildcards or a list: one indexed lookup and at most one stored header."""
    unique_tag = tag_for_keyword(UNIQUE_KEY[search.level])
    values = []
    for name, value in params:
        if name.strip().lower() in _CONTROL:
            continue
        try:
            tag = _tag_of(name.split(".")[0])
        except BadRequest:
            return False  # answered (400) by the search itself
        if tag == unique_tag:
            values.append(value)
    return len(values) == 1 and bool(values[0].strip()) and not any(c in values[0] for c in "*?,\\")


class Qido:
    """QIDO-RS over one store, with the configuration's visibility and limits."""

    def __init__(self, cfg: Config, store: Any):
        self.cfg = cfg
        self.store = store

    def search(self, search: Search, path_uids: dict[str, str], params: Iterable[tuple[str, str]], base_url: str) -> Answer:
        ident, control = build_identifier(search, path_uids, params)
        asked = {kw for kw in _DIMSE_ONLY if any(f in (kw, f"{tag_for_keyword(kw):08X}") for f in control["includefield"])}
        engine = QueryEngine(self.store.index, self.store.root, self.cfg.dicom.ae_title, synthetic_only=self.cfg.qr.synthetic_only)
        answer = Answer([])
        if control["fuzzy"]:
            answer.warnings.append(FUZZY_WARNING)
        server_max = self.cfg.qr.max_results or None
        limit = control["limit"] if control["limit"] else self.cfg.dicomweb.default_limit or None
        if server_max is not None and (limit is None or limit > server_max):
            limit = server_max
        # Computed keys of a higher level (Number of Study Related Instances in an all-series search) are
        # answered by the engine for the entity of their own level that holds the match (one aggregate query
        # per entity, cached for the search), as C-FIND answers them.
        # Modality asked for as a return key of a study search is answered with the study's modalities, as
        # Orthanc's DICOMweb plugin answers it; C-FIND answers it empty (a key of a lower level). Viewers
        # ask for it (OHIF Viewer 2's study list sends includefield=00081030,00080060 and fails on an empty one).
        modality = tag_for_keyword("Modality")
        study_modality = search.level == STUDY and modality in ident and element_text(ident[modality]) in ("", "*")
        skipped = 0
        for ds in engine.iter_find(ident, search.level):
            if skipped < control["offset"]:
                skipped += 1
                continue
            if limit is not None and len(answer.matches) >= limit:
                if control["limit"] is None or control["limit"] > limit:
                    answer.warnings.append(LIMIT_WARNING)
                break
            for keyword in _DIMSE_ONLY:
                if keyword not in asked and keyword in ds:
                    del ds[keyword]
            if study_modality and ds.get("ModalitiesInStudy"):
                ds.Modality = ds.ModalitiesInStudy
            ds.RetrieveURL = retrieve_url(base_url, search.level, ds)
            answer.matches.append(dicomjson.to_json(ds))
        return answer


def retrieve_url(base_url: str, level: str, ds: Dataset) -> str:
    """Where WADO-RS retrieves a match (PS3.18 10.6.3.3.1, Retrieve URL (0008,1190))."""
    url = f"{base_url}/studies/{ds.StudyInstanceUID}"
    if RANK[level] >= RANK[SERIES]:
        url += f"/series/{ds.SeriesInstanceUID}"
    if level == IMAGE:
        url += f"/instances/{ds.SOPInstanceUID}"
    return url


__all__ = ["ALL_INSTANCES", "ALL_SERIES", "STUDIES", "STUDY_INSTANCES", "STUDY_SERIES", "SERIES_INSTANCES", "Answer", "Qido",
           "Search", "at_most_one_match", "build_identifier", "retrieve_url"]
