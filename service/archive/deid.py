"""De-identification on ingest: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Every attribute of PS3.15 Table E.1-1 is handled with its action, read from the generated table
:mod:`service.archive.deid_table` (652 attributes and the repeating groups; where it comes from and how
to regenerate it is said there; tests/ingest/test_deid_table.py checks every row against Kitware's
dicom-anonymizer and every action on a dataset that carries all of them). The table applies at every
depth: an attribute inside a sequence item gets the same action as at top level.

Why a table of our own and not a library (compared again for issue 14):

* ``dicom-anonymizer`` (Kitware, BSD-3) encodes the Basic Profile column best (we generate ours from
  it), but has no option columns, replaces UIDs from an in-memory dictionary of random UIDs (not
  keyed: a re-send after a restart gets new UIDs and no longer deduplicates) and converts every
  element through pydicom, which the streaming header path avoids.
* ``dicognito`` (MIT) is deterministic with a seed but not driven by Table E.1-1 (it invents names and
  addresses, shifts every date), has no retain options and writes no CID 7050 codes.
* ``deid`` (pydicom/deid, MIT) is a recipe engine; its default recipe is a subset of the table.

Options (PS3.15 E.3) and what they change, declared in the De-identification Method Code Sequence
(PS3.16 CID 7050):

* Retain Longitudinal Temporal Information (E.3.6), always one of the two: with Modified Dates (113107,
  the default) every DA is moved by a keyed number of days per patient and every TM by a keyed number
  of seconds per patient, cyclically within the day (a DT: both, on its date and its time): intervals
  in days are exact and intervals within a day survive unless they cross midnight; a date and its time
  are moved independently, so none leaks through the other. With Full Dates (113106,
  ``deid.retain_longitudinal_dates``) dates and times are kept.
* Retain Patient Characteristics (113108, ``deid.retain_patient_characteristics``): only sex and a coarse
  age (``deid.age_bin_years``) are kept of what the option allows; size, weight, ethnic group,
  smoking and pregnancy status keep their Basic Profile action.
* Retain Device Identity (113109, ``deid.retain_device_identity``): every attribute the option keeps.
* Not used: Retain UIDs (UIDs are remapped), Retain Institution Identity, Retain Safe Private, Clean
  Descriptors, Clean Structured Content, Clean Graphics: descriptors and comments (Study and Series
  Description, Protocol Name, ...) are removed, as the Basic Profile says. An option column that says C
  (clean) for free text we cannot clean keeps the Basic Profile action.

Combined actions depend on the attribute's type in the IOD (Table E.1-1a); the type is not known per
IOD here, so the action that keeps every IOD valid is taken: X/Z -> Z, X/D, X/Z/D and Z/D -> D
(a dummy value, per VR), X/Z/U* -> keep the sequence and remap the UIDs inside it. D on a UID is U; D on
a sequence removes it (a sequence of dummy items says nothing and breaks nothing a training store needs).

Rules for what no row names, derived from the profile:

* every private attribute is removed (the Retain Safe Private Option is not used, PS3.15 E.3.10), as
  are curves (50xx) and overlays (60xx, whose data and comments can spell names over the image), group
  lengths, and public attributes no dictionary knows (nobody can say they are safe);
* every UI value that is not a class, transfer syntax or coding-scheme UID of the standard is remapped
  with :func:`service.archive.uids.keyed_uid` (the profile's "U", consistent per PS3.15 E.3.9: the same UID
  maps to the same new UID, keyed by the configured secret);
* every Person Name (PN) the table does not name is removed;
* every other DA, DT or TM follows the longitudinal option above;
* a Code Meaning (0008,0104) is free text beside a code: it becomes the standard's meaning of that code
  (pydicom's code dictionaries: DCM, SCT, LN, ...) or, for a code it does not know, the code itself.

The patient is replaced by a pseudonym derived from the keyed hash of the original patient identity,
so one patient's studies stay together in the store; the result records PatientIdentityRemoved = YES,
De-identification Method and its Code Sequence (CID 7050) and Longitudinal Temporal Information
Modified (PS3.3 C.7.1.1, C.12.1). Same input bytes and same secret give the same output bytes, so a
re-sent instance is recognized as identical. Nothing here logs a value.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
import re
from dataclasses import dataclass

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from service.archive import deid_table
from service.archive.uids import keyed_uid
from service.config import Config, DeidConfig
from service.home import Home

# Attributes the training pipeline reads; none is in Table E.1-1, so the profile keeps them. Named here
# so that no rule added later removes them by accident (tests check it).
RETAINED_FOR_TRAINING = (
    "Modality", "BodyPartExamined", "ViewPosition", "Laterality", "ImageLaterality", "PixelSpacing",
    "ImagerPixelSpacing", "PatientOrientation", "PhotometricInterpretation", "BurnedInAnnotation",
)

# What the Retain Patient Characteristics Option keeps here: the option allows more (size, weight,
# ethnic group, ...); training needs only these, so the others keep their Basic Profile action.
PATIENT_CHARACTERISTICS_KEPT = frozenset({0x00100040, 0x00101010})  # PatientSex, PatientAge

# UIDs that name a class, syntax or scheme, not an instance: they identify nobody and must survive.
_KEPT_UID_KEYWORD = re.compile(r"(ClassUID|TransferSyntaxUID|CodingSchemeUID|MappingResourceUID|ContextUID)$")
_STANDARD_UID_ROOT = "1.2.840.10008."
_DATE_VRS = frozenset({"DA", "DT", "TM"})
# Combined actions of Table E.1-1a resolved without the IOD: the one that keeps every IOD valid.
_COMBINED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "K"}
_CODE_MEANING, _CODE_VALUE, _CODING_SCHEME = 0x00080104, 0x00080100, 0x00080102
_LONG_CODE_VALUE, _URN_CODE_VALUE = 0x00080119, 0x00080120

# PS3.16 CID 7050 De-identification Method, coding scheme DCM.
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_RETAIN_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
CODE_RETAIN_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_RETAIN_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_RETAIN_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")

# Dummy values (action D) per VR; every other text VR gets "ANONYMIZED" (fits AE, CS and SH too).
_DUMMY_BY_VR = {"PN": "ANONYMOUS", "DS": "0", "IS": "0", "AS": "000Y", "DA": "19000101", "DT": "19000101000000", "TM": "000000"}
_TM_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT_TIME_RE = re.compile(r"^(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?$")
_PLAIN_TEXT = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash
_AGE_RE = re.compile(r"^(\d{3})([DWMY])$")
_GROUP_LENGTH = 0x0000
_PLAN_CACHE_LIMIT = 4096
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_PLAIN_TEXT_VRS = _TEXT_VRS - {"PN"}
_PATIENT_NAME, _PATIENT_ID, _PATIENT_BIRTH_DATE, _PATIENT_SEX, _PATIENT_AGE = 0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x00101010
_ISSUER_OF_PATIENT_ID, _STUDY_INSTANCE_UID, _BURNED_IN_ANNOTATION = 0x00100021, 0x0020000D, 0x00280301
_STUDY_ID = 0x00200010
# StudyDate, AcquisitionDate, ContentDate, SeriesDate: the first present dates the patient's age.
_REFERENCE_DATES = (0x00080020, 0x00080022, 0x00080023, 0x00080021)

# Pseudonyms say what they are; the prefix avoids "SYN" (synthetic patients, ARCHITECTURE.md).
PSEUDONYM_ID_PREFIX = "ANON-"
PSEUDONYM_NAME_FAMILY = "ANONYMOUS"


def table_action(tag: int, cfg: DeidConfig) -> str | None:
    """The Table E.1-1 action for ``tag`` under the options ``cfg`` declares, or None if no row names it.

    One of the option columns replaces the Basic Profile action where the option is declared (PS3.15
    E.3): Retain Longitudinal Temporal Information with Full Dates or with Modified Dates (one of them
    always), Retain Patient Characteristics (for :data:`PATIENT_CHARACTERISTICS_KEPT` only) and Retain
    Device Identity. An option's C on anything but a date or time (free text we cannot clean) keeps the
    Basic Profile action.
    """
    row = deid_table.TABLE.get(tag)
    if row is None:
        for value, mask, name, basic, options in deid_table.MASKED:
            if tag & mask == value:
                row = (name, basic, options)
                break
        else:
            return None
    _, basic, options = row
    declared = ["full_dates" if cfg.retain_longitudinal_dates else "modified_dates"]
    if cfg.retain_patient_characteristics and tag in PATIENT_CHARACTERISTICS_KEPT:
        declared.append("patient")
    if cfg.retain_device_identity:
        declared.append("device")
    for option in declared:
        action = options.get(option)
        if action == "K" or (action == "C" and option == "modified_dates"):
            return action
    return basic


def basic_action(tag: int) -> str | None:
    """The Basic Profile column of Table E.1-1 for ``tag`` (no option), or None if no row names it."""
    row = deid_table.TABLE.get(tag)
    if row is not None:
        return row[1]
    for value, mask, _name, basic, _options in deid_table.MASKED:
        if tag & mask == value:
            return basic
    return None


@dataclass(frozen=True)
class _Patient:
    """Keyed facts about the original patient, computed before anything is removed."""

    token: str  # hex of the keyed hash of the patient identity
    day_shift: int  # days added to every date (negative: into the past)
    second_shift: int  # seconds added to every time of day, modulo a day
    age: str  # coarse PatientAge, or ""


class Deidentifier:
    """Callable: ``deid(ds) -> (ds, exclusion_reason)``; ``ds`` is changed in place and returned.

    ``exclusion_reason`` is non-empty when the instance must be stored but kept out of training
    (Burned In Annotation = YES, PS3.3 C.7.6.1.1.6).
    """

    def __init__(self, secret: bytes, cfg: DeidConfig | None = None):
        if not secret:
            raise ValueError("the de-identification secret must not be empty")
        self.secret = secret
        self.cfg = cfg or DeidConfig()
        self._plans: dict[tuple[int, str | None], tuple[str, str]] = {}
        self._codes = self._method_codes()
        self._raw_marks: dict[tuple[bool, bool], list] = {}

    @classmethod
    def from_config(cls, cfg: Config, home: Home) -> "Deidentifier":
        return cls(home.secret("deid", cfg.deid.secret), cfg.deid)

    # -- public ----------------------------------------------------------------------------------------

    def __call__(self, ds: Dataset) -> tuple[Dataset, str]:
        patient = self._patient(ds)
        self._clean(ds, patient)
        self._pseudonymize(ds, patient)
        self._mark(ds)
        return ds, self._exclusion(ds)

    def remap_uid(self, uid: str) -> str:
        """The de-identified UID that ``uid`` becomes (the same for every instance and every restart)."""
        return keyed_uid(self.secret, uid, self.cfg.uid_root)

    def pseudonym(self, patient_id: str, issuer: str = "") -> str:
        """The PatientID that a patient with this ID (and issuer) receives."""
        return PSEUDONYM_ID_PREFIX + self._keyed("patient", f"{issuer}\\{patient_id}")[:16].upper()

    # -- steps -----------------------------------------------------------------------------------------

    def _keyed(self, purpose: str, value: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def _patient(self, ds: Dataset) -> _Patient:
        pid = _text_of(ds, _PATIENT_ID)
        issuer = _text_of(ds, _ISSUER_OF_PATIENT_ID)
        if pid:
            identity = f"{issuer}\\{pid}"
        else:
            # No ID: the name and birth date are the identity; with neither, the study stands alone.
            name, birth = _text_of(ds, _PATIENT_NAME), _text_of(ds, _PATIENT_BIRTH_DATE)
            identity = f"name:{name}\\{birth}" if (name or birth) else f"study:{_text_of(ds, _STUDY_INSTANCE_UID)}"
        token = self._keyed("patient", identity)
        # 1..3652 days into the past, per patient: intervals within a patient survive (E.3.6).
        keyed_shift = self._keyed("dateshift", identity)
        shift = -(1 + int(keyed_shift[:8], 16) % 3652)
        # 1..86399 s: never 0, so no time of day is ever kept as it was.
        seconds = 1 + int(keyed_shift[8:16], 16) % 86399
        age = ""
        if self.cfg.retain_patient_characteristics:
            given = _text_of(ds, _PATIENT_AGE)
            on = None if _AGE_RE.match(given) else _reference_date(ds)
            age = coarse_age(given, _text_of(ds, _PATIENT_BIRTH_DATE), on, self.cfg.age_bin_years)
        return _Patient(token, shift, seconds, age)

    def _clean(self, ds: Dataset, patient: _Patient) -> None:
        # Elements are inspected raw (tag and VR only) and converted only when changed: most of a
        # header is kept, and an unconverted element is written back as received, byte for byte.
        encoding = getattr(ds, "original_encoding", (None, None))
        # The stored elements as they are (what Dataset.elements() yields for datasets parsed from
        # bytes, without its sort and per-tag lookups, a third of this function's time); each element
        # is decided alone, so the order does not matter.
        for key, elem in list(ds._dict.items()):
            tag = int(key)  # plain ints: BaseTag compares in Python, a dict lookup with it is slow
            if elem.value is None and isinstance(elem, RawDataElement) and elem.length:
                elem = ds.get_item(key)  # a deferred read (dcmread's defer_size): read it now
            action, vr = self._plan(tag, elem.VR)
            if action == "K":
                if vr == "SQ":
                    for item in ds[tag].value:
                        self._clean(item, patient)
            elif action == "X":
                del ds[tag]
            elif action == "Z":
                if vr == "SQ":
                    ds[tag] = DataElement(tag, vr, Sequence([]))
                else:
                    _set(ds, tag, vr, [] if vr not in _TEXT_VRS else [""], encoding)
            elif action == "D":
                if vr in _TEXT_VRS:
                    _set(ds, tag, vr, [_DUMMY_BY_VR.get(vr, "ANONYMIZED")], encoding)
                else:  # binary: zeros of the same length say nothing and keep the value well formed
                    _set_bytes(ds, tag, vr, bytes(len(_raw_bytes(ds, tag))))
            elif action == "U":
                values = _values(elem)
                if any(values):
                    _set(ds, tag, vr, [v if (not v or v.startswith(_STANDARD_UID_ROOT)) else self.remap_uid(v) for v in values], encoding)
            elif action == "C":
                _set(ds, tag, vr, [_shift(v, vr, patient.day_shift, patient.second_shift) for v in _values(elem)], encoding)
            elif action == "M":
                _set_text(ds, tag, vr, _code_meaning(ds))

    def _plan(self, tag: int, read_vr: str | None) -> tuple[str, str]:
        """What happens to an element with this tag, read with this VR: (action, VR to write it with).

        Actions: K keep (a sequence's items are cleaned), X remove, Z empty, D dummy, U remap the UIDs,
        C shift the dates and times, M replace a Code Meaning. The answer depends on nothing else, so it
        is worked out once per tag and VR.
        """
        key = (tag, read_vr)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._decide(tag, read_vr)
            if len(self._plans) < _PLAN_CACHE_LIMIT:  # tags come from the network: keep the cache bounded
                self._plans[key] = plan
        return plan

    def _decide(self, tag: int, read_vr: str | None) -> tuple[str, str]:
        group, elem = tag >> 16, tag & 0xFFFF
        vr = read_vr or "UN"
        if group % 2 == 1 or elem == _GROUP_LENGTH or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            return "X", vr
        if tag in _PIXEL_TAGS:
            return "K", vr  # never touched: pixel data is stored as received
        action = table_action(tag, self.cfg)
        known = dictionary_has_tag(tag)
        if action is None and not known and group not in (0x0002, 0xFFFE):
            return "X", vr  # a public attribute no dictionary knows: nobody can say it is safe
        if (read_vr is None or read_vr == "UN") and known:
            vr = dictionary_VR(tag)
        if action is None:
            if tag == _CODE_MEANING:
                return ("M", vr) if vr in _TEXT_VRS else ("X", vr)
            if vr in _DATE_VRS:
                action = "K" if self.cfg.retain_longitudinal_dates else "C"
            else:
                action = {"UI": "U", "PN": "X", "SQ": "K"}.get(vr, "K")
        if action == "C" and vr not in _DATE_VRS:  # a "timestamp" that is not a DA/DT/TM: no clean known
            action = basic_action(tag)
        action = _COMBINED.get(action, action)
        if action == "K":
            return "K", vr
        if action == "X" or (action == "D" and vr in ("SQ", "UN")):
            return "X", vr
        if action == "D" and vr == "UI":
            action = "U"
        if action == "U":
            if vr != "UI":
                return "X", vr  # U names UIDs; anything else under that tag is not one
            if tag not in deid_table.TABLE and _KEPT_UID_KEYWORD.search(keyword_for_tag(tag) or ""):
                return "K", vr  # a class, syntax or scheme UID
        return action, vr

    def _pseudonymize(self, ds: Dataset, patient: _Patient) -> None:
        _set(ds, _PATIENT_ID, "LO", [PSEUDONYM_ID_PREFIX + patient.token[:16].upper()])
        _set(ds, _PATIENT_NAME, "PN", [f"{PSEUDONYM_NAME_FAMILY}^{patient.token[:8].upper()}"])
        if self.cfg.retain_patient_characteristics:
            if patient.age:
                _set(ds, _PATIENT_AGE, "AS", [patient.age])
            elif _PATIENT_AGE in ds:
                del ds[_PATIENT_AGE]
        # Study ID is Z in Table E.1-1 ("zero length or a dummy value"): a dummy keyed on the remapped Study
        # Instance UID, the same for every instance of the study and every re-send, so a DICOMDIR (whose
        # STUDY record needs a Study ID, PS3.3 F.5) and a worklist can name the study without the original.
        study_uid = _text_of(ds, _STUDY_INSTANCE_UID)
        if study_uid:
            _set(ds, _STUDY_ID, "SH", [PSEUDONYM_ID_PREFIX + self._keyed("study", study_uid)[:11].upper()])
        if _PATIENT_BIRTH_DATE not in ds:
            _set(ds, _PATIENT_BIRTH_DATE, "DA", [""])  # Type 2 in the Patient Module (PS3.3 C.7.1.1)
        if _PATIENT_SEX not in ds:
            _set(ds, _PATIENT_SEX, "CS", [""])

    def _method_codes(self) -> list[tuple[str, str]]:
        codes = [CODE_BASIC_PROFILE]
        codes.append(CODE_RETAIN_FULL_DATES if self.cfg.retain_longitudinal_dates else CODE_RETAIN_MODIFIED_DATES)
        if self.cfg.retain_patient_characteristics:
            codes.append(CODE_RETAIN_PATIENT_CHARACTERISTICS)
        if self.cfg.retain_device_identity:
            codes.append(CODE_RETAIN_DEVICE_IDENTITY)
        return codes

    def _marks(self) -> Dataset:
        """PatientIdentityRemoved, the method text and codes, temporal flag (PS3.3 C.7.1.1 and C.12.1)."""
        marks = Dataset()
        marks.PatientIdentityRemoved = "YES"
        marks.DeidentificationMethod = "synthpacs PS3.15 E.1-1 Basic Profile" + (
            " + dates and times kept" if self.cfg.retain_longitudinal_dates else " + dates and times shifted"
        )
        items = []
        for value, meaning in self._codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        marks.DeidentificationMethodCodeSequence = Sequence(items)
        marks.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.cfg.retain_longitudinal_dates else "MODIFIED"
        return marks

    def _mark(self, ds: Dataset) -> None:
        # The marks are the same for every instance: encoded once per encoding and added as raw
        # elements, which the store's writer copies instead of encoding a sequence each time.
        encoding = getattr(ds, "original_encoding", (None, None))
        if None in encoding:
            for elem in self._marks():
                ds[elem.tag] = elem
            return
        raw = self._raw_marks.get(encoding)
        if raw is None:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = encoding
            write_dataset(fp, self._marks())
            parsed = read_dataset(io.BytesIO(fp.getvalue()), *encoding)
            raw = self._raw_marks[encoding] = [parsed.get_item(tag) for tag in parsed.keys()]
        for elem in raw:
            ds[elem.tag] = elem

    @staticmethod
    def _exclusion(ds: Dataset) -> str:
        if _text_of(ds, _BURNED_IN_ANNOTATION).upper() == "YES":
            return "burned-in annotation"
        return ""


# -- values ------------------------------------------------------------------------------------------


def _str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, DataElement):
        value = value.value
    return str(value).strip() if value is not None else ""


def _text_of(ds: Dataset, tag: int) -> str:
    """``_str(ds.get(tag))``, read from the raw bytes when pydicom's conversion cannot change them.

    Printable ASCII without a backslash (several values), NUL or ESC (ISO 2022, PS3.5 §6.1.2.5.3)
    decodes alike in every character set; anything else is converted by pydicom.
    """
    if tag not in ds:
        return ""
    elem = ds.get_item(tag)
    # Not for names: pydicom's PersonName drops empty trailing component groups ("DOE^JOHN=" reads "DOE^JOHN").
    if isinstance(elem, RawDataElement) and (elem.VR or dictionary_VR(tag)) in _PLAIN_TEXT_VRS:
        raw = elem.value or b""
        if _PLAIN_TEXT.fullmatch(raw):
            return raw.decode("ascii").strip()
    return _str(ds[tag])


def _values(elem: DataElement | RawDataElement) -> list[str]:
    """The text values of a string element, read from its raw bytes when it was never converted."""
    if isinstance(elem, RawDataElement):
        text = (elem.value or b"").decode("latin-1").rstrip("\x00 ")
        return text.split("\\") if text else []
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _set(ds: Dataset, tag: int, vr: str, values: list[str], encoding: tuple[bool | None, bool | None] | None = None) -> None:
    """Put an ASCII string element; as a raw element in the dataset's own encoding when it has one.

    Every value de-identification writes (pseudonyms, remapped UIDs, shifted dates, empties) is ASCII,
    so it is encoded here once instead of through pydicom's writer (PS3.5 §6.2: UI padded with NUL,
    other string VRs with a space, to an even length). ``encoding``: ``ds.original_encoding``, when the
    caller already has it.
    """
    implicit, little = encoding or getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        empty = "" if vr in _TEXT_VRS else None
        ds[tag] = DataElement(tag, vr, (values[0] if len(values) == 1 else values) if values else empty)
        return
    data = "\\".join(values).encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    key = BaseTag(tag)
    # What Dataset.__setitem__ does for a raw element that is neither private nor pixel data (never
    # written here), without its checks, which cost more than the rest of this function.
    ds._dict[key] = RawDataElement(key, None if implicit else vr, len(data), data, 0, implicit, little, True, False)


def _parse_da(text: str) -> _dt.date | None:
    text = text.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _set_bytes(ds: Dataset, tag: int, vr: str, data: bytes) -> None:
    """Put a binary element (OB, OW, US, FL, ...) holding ``data`` (zeros), raw in the dataset's
    encoding if it has one; a converted number becomes 0."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        ds[tag] = DataElement(tag, vr, 0 if vr in _NUMBER_WIDTH and vr != "AT" else data)
        return
    ds[tag] = RawDataElement(BaseTag(tag), None if implicit else vr, len(data), data, 0, implicit, little, True, False)


_NUMBER_WIDTH = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "UV": 8, "SV": 8}


def _raw_bytes(ds: Dataset, tag: int) -> bytes:
    """The encoded value of an element (only its length matters to the caller); one number's width
    for a converted numeric element, whose bytes are not at hand."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return bytes(elem.value or b"")
    value = elem.value
    if isinstance(value, bytes):
        return value
    return bytes(_NUMBER_WIDTH.get(elem.VR, 0))


def _set_text(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Put one text value that may hold any character: raw ASCII when it is ASCII, else through pydicom."""
    if text.isascii():
        _set(ds, tag, vr, [text])
    else:
        ds[tag] = DataElement(tag, vr, text)


_code_meanings: dict[tuple[str, str], str] | None = None


def standard_code_meaning(scheme: str, value: str) -> str | None:
    """The meaning pydicom's code dictionaries (PS3.16 and the schemes it uses) give a code, or None."""
    global _code_meanings
    if _code_meanings is None:
        from pydicom.sr._concepts_dict import concepts

        table: dict[tuple[str, str], str] = {}
        for designator, names in concepts.items():
            for by_value in names.values():
                for code, (meaning, _cids) in by_value.items():
                    table.setdefault((designator, code), meaning)
        _code_meanings = table
    return _code_meanings.get((scheme, value))


def _code_meaning(item: Dataset) -> str:
    """A Code Meaning that says no more than its code (PS3.3 8.8): the standard's, or the code itself."""
    scheme = _text_of(item, _CODING_SCHEME)
    value = _text_of(item, _CODE_VALUE) or _text_of(item, _LONG_CODE_VALUE) or _text_of(item, _URN_CODE_VALUE)
    meaning = standard_code_meaning(scheme, value)
    if meaning is None:
        meaning = f"{value} ({scheme})" if scheme else value
    return meaning[:64]  # LO


def _shift(text: str, vr: str, days: int, seconds: int) -> str:
    """A DA, DT or TM value moved by ``days`` and ``seconds`` (E.3.6 Modified Dates); a value we cannot
    parse is emptied. Dates move by whole days; times of day move by ``seconds`` modulo a day, keeping
    their precision; a DT moves on both parts and keeps its UTC offset."""
    text = text.strip()
    if vr == "TM":
        return _shift_time(text, seconds)
    day = _parse_da(text)
    if day is None:
        return ""
    try:
        shifted = (day + _dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return ""
    if vr != "DT" or len(text) == 8:
        return shifted
    m = _DT_TIME_RE.match(text[8:])
    if not m:
        return shifted  # an unreadable time part is dropped, not kept
    time = _shift_time(m.group(1), seconds) if m.group(1) else ""
    return shifted + time + (m.group(2) or "") if (time or not m.group(1)) else shifted


def _shift_time(text: str, seconds: int) -> str:
    """HH[MM[SS[.F{1,6}]]] (PS3.5 Table 6.2-1; also the older HH:MM:SS) moved cyclically within a day."""
    m = _TM_RE.match(text.strip().replace(":", ""))
    if not m:
        return ""
    hours, minutes, secs = int(m.group(1)), int(m.group(2) or 0), min(int(m.group(3) or 0), 59)
    if hours > 23 or minutes > 59:
        return ""
    total = (hours * 3600 + minutes * 60 + secs + seconds) % 86400
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{hours:02d}"
    if m.group(2):
        out += f"{minutes:02d}"
        if m.group(3):
            out += f"{secs:02d}" + (m.group(4) or "")
    return out


def _reference_date(ds: Dataset) -> _dt.date | None:
    for tag in _REFERENCE_DATES:
        day = _parse_da(_text_of(ds, tag))
        if day is not None:
            return day
    return None


def coarse_age(age: str, birth_date: str, on: _dt.date | None, bin_years: int = 5) -> str:
    """PatientAge (AS, PS3.5 §6.2) reduced to what training needs and little else.

    Under 2 years: whole months (growth plates change fast); then years rounded down to ``bin_years``;
    90 and over are reported as 090Y together (as HIPAA Safe Harbor aggregates them).
    """
    days: float | None = None
    m = _AGE_RE.match(age or "")
    if m:
        n, unit = int(m.group(1)), m.group(2)
        days = n * {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}[unit]
    else:
        birth = _parse_da(birth_date or "")
        if birth is not None and on is not None and on >= birth:
            days = (on - birth).days
    if days is None:
        return ""
    years = days / 365.25
    if years < 2:
        return f"{int(days // 30.4375):03d}M"
    if years >= 90:
        return "090Y"
    step = max(1, bin_years)
    return f"{int(years) // step * step:03d}Y"
