"""PS3.15 Table E.1-1 attribute by attribute: our generated table against Kitware's dicom-anonymizer, and
every action carried out on a dataset that holds every attribute of the table, at top level and inside
sequences, read as pydicom builds it and raw as the streaming path reads it."""

from __future__ import annotations

import copy
import datetime as dt
import io

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from service.archive import deid_table
from service.archive.deid import Deidentifier, standard_code_meaning, table_action
from service.config import DeidConfig
from service.data.phantom import phantom_dataset
from tests.ingest.deid_dataset import MARK, markers, planted, table_vr
from tests.ingest.util import part10

KITWARE_CATEGORIES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
CONFIGS = {
    "default": DeidConfig(),
    "full-dates+device": DeidConfig(retain_longitudinal_dates=True, retain_device_identity=True, retain_patient_characteristics=False),
}
_DATE_VRS = ("DA", "DT", "TM")


def _reference() -> tuple[dict[int, str], set[tuple[int, int, str]]]:
    """Kitware's encoding of the table (the [dev] extra installs it): tag -> action, masked rows."""
    module = pytest.importorskip("dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c")
    rows: dict[int, str] = {}
    masked: set[tuple[int, int, str]] = set()
    for category, action in KITWARE_CATEGORIES.items():
        for entry in getattr(module, category):
            if len(entry) == 2:
                rows[(entry[0] << 16) | entry[1]] = action
            else:
                masked.add(((entry[0] << 16) | entry[1], (entry[2] << 16) | entry[3], action))
    return rows, masked


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def test_every_attribute_of_the_reference_table_has_its_action_in_ours():
    rows, masked = _reference()
    assert len(rows) >= 650
    ours = {tag: row[1] for tag, row in deid_table.TABLE.items()}
    differ = {_tag(t): (action, ours.get(t)) for t, action in rows.items() if ours.get(t) != action}
    assert differ == {}
    assert {_tag(t) for t in ours.keys() - rows.keys()} == set()
    assert {(value, mask, action) for value, mask, _, action, _ in deid_table.MASKED} == masked


def _expected(tag: int, vr: str, cfg: DeidConfig) -> str:
    """What must happen to a planted attribute: our policy for the combined actions, spelled out."""
    action = table_action(tag, cfg)
    if action == "C" and vr not in _DATE_VRS:  # Modified Dates' C on a binary timestamp: the Basic Profile's
        action = deid_table.TABLE[tag][1]
    action = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "K"}.get(action, action)
    if vr == "UN" and action != "K":
        return "X"  # implicit VR and unknown to the dictionary: nothing can be written back safely
    if action == "D" and vr == "SQ":
        return "X"
    if action == "D" and vr == "UI":
        return "U"
    if action == "U" and vr != "UI":
        return "X"
    return action


def _encoded(ds: Dataset, encoding: str) -> Dataset:
    if encoding == "dataset":
        return copy.deepcopy(ds)
    implicit = encoding == "implicit"
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    raw = read_dataset(io.BytesIO(fp.getvalue()), implicit, True)
    raw.file_meta = ds.file_meta
    return raw


def _empty(value) -> bool:
    return value in (None, "", b"") or (isinstance(value, Sequence) and len(value) == 0)


@pytest.mark.parametrize("encoding", ["dataset", "explicit", "implicit"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_attribute_of_the_table_gets_its_action(config, encoding):
    cfg = CONFIGS[config]
    original = phantom_dataset(16, 16)
    values = planted(original, cfg)
    deid = Deidentifier(b"table-test", cfg)
    out, _ = deid(_encoded(original, encoding))
    patient = deid._patient(_encoded(original, encoding))
    wrong = {}
    for tag, value in values.items():
        vr = table_vr(tag)
        read_vr = "UN" if encoding == "implicit" and not _known(tag) else vr
        want = _expected(tag, read_vr, cfg)
        got = out.get(tag)
        got_value = None if got is None else got.value
        if tag in (0x00100010, 0x00100020, 0x00200010):  # Z, then the pseudonym (a keyed Study ID for the study)
            ok = str(got_value).startswith(("ANONYMOUS^", "ANON-")) and str(got_value) != str(value)
        elif tag == 0x00101010 and want == "K":
            ok = got_value == "045Y"  # coarse age: 45 years in 5-year bins
        elif want == "X":
            ok = got is None
        elif want == "Z":
            ok = got is not None and _empty(got_value)
        elif want == "D":
            ok = got is not None and not _empty(got_value) and got_value != value
        elif want == "U":
            ok = got_value == deid.remap_uid(value)
        elif want == "C":
            ok = got is not None and _shifted(str(value), str(got_value), vr, patient.day_shift, patient.second_shift)
        elif vr == "SQ":
            ok = got is not None and all(_clean_item(item) for item in got_value)
        else:
            ok = got is not None and (got_value == value or str(got_value) == str(value))
        if not ok:
            wrong[f"{_tag(tag)} {deid_table.TABLE[tag][0]}"] = (want, value, got_value)
    assert wrong == {}
    if config == "default":
        data = part10(out)
        for marker in markers():
            assert marker not in data, marker


def _known(tag: int) -> bool:
    from pydicom.datadict import dictionary_has_tag

    return dictionary_has_tag(tag)


def _clean_item(item: Dataset) -> bool:
    """A kept sequence's item: the name a dummy (D), the comment gone, UIDs remapped, the code meaning standard."""
    return (
        item[0x0040A123].value == "ANONYMOUS" and 0x00204000 not in item
        and not str(item.get("ReferencedSOPInstanceUID", "")).startswith("1.2.3.4.77777.")
        and item.get("CodeMeaning") == standard_code_meaning("DCM", "113100")
        and item.ConceptNameCodeSequence[0].CodeMeaning == "L1 (99LOCAL)"
    )


def _shifted(before: str, after: str, vr: str, days: int, seconds: int) -> bool:
    def time_of(text: str) -> int:
        return int(text[:2]) * 3600 + int(text[2:4]) * 60 + int(text[4:6])

    if vr == "DA":
        return dt.date.fromisoformat(after) - dt.date.fromisoformat(before) == dt.timedelta(days=days)
    if vr == "TM":
        return (time_of(after) - time_of(before)) % 86400 == seconds and after[6:] == before[6:]
    return _shifted(before[:8], after[:8], "DA", days, seconds) and _shifted(before[8:], after[8:], "TM", days, seconds)


def test_no_planted_attribute_passes_unchanged_unless_an_option_keeps_it():
    # The finding of issue 14: 251 of 603 attributes of the table passed unchanged.
    cfg = DeidConfig()
    original = phantom_dataset(16, 16)
    for keyword in ("PatientSex", "PatientAge"):
        original.pop(keyword, None)
    values = planted(original, cfg)
    out, _ = Deidentifier(b"k", cfg)(copy.deepcopy(original))
    unchanged = sorted(deid_table.TABLE[t][0] for t, v in values.items() if t in out and out[t].value == v)
    kept = sorted(deid_table.TABLE[t][0] for t in values if table_action(t, cfg) in ("K", "X/Z/U*"))
    assert set(unchanged) <= set(kept)
    assert set(kept) == {"Patient's Sex", "Patient's Age", "Referenced Image Sequence", "Source Image Sequence"}


# The attributes issue 14 found stored verbatim, each with the action Table E.1-1 gives it.
NAMED_IN_ISSUE_14 = [
    ("Arbitrary", 0x40000010, "LT", "X"),
    ("CameraOwnerName", 0x0016004D, "SH", "X"),
    ("ImagePresentationComments", 0x00289491, "LT", "X"),
    ("TextString", 0x20300020, "LO", "X"),
    ("ReasonForTheImagingServiceRequest", 0x00402001, "LO", "X"),
    ("LabelText", 0x22000002, "UT", "Z"),
    ("RequestedSeriesDescription", 0x00189937, "LO", "X"),
    ("TopicAuthor", 0x00880912, "LO", "X"),
    ("ResultsComments", 0x40084000, "ST", "X"),
    ("ScheduledStudyLocation", 0x00321020, "LO", "X"),
]


@pytest.mark.parametrize("keyword, tag, vr, action", NAMED_IN_ISSUE_14, ids=[row[0] for row in NAMED_IN_ISSUE_14])
@pytest.mark.parametrize("encoding", ["dataset", "explicit"])
def test_free_text_named_in_issue_14_is_not_stored(keyword, tag, vr, action, encoding):
    ds = phantom_dataset(16, 16)
    ds.add_new(tag, vr, f"{MARK} {keyword} DOE^JANE")
    out, _ = Deidentifier(b"k")(_encoded(ds, encoding))
    if action == "X":
        assert tag not in out
    else:
        assert tag in out and _empty(out[tag].value)
    assert MARK.encode() not in part10(out)


@pytest.mark.parametrize("encoding", ["dataset", "explicit", "implicit"])
def test_code_meaning_free_text_is_replaced_at_any_depth(encoding):
    ds = phantom_dataset(16, 16)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", f"{MARK} typed by DR DOE"
    local = Dataset()
    local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning = "KNEE-7", "99LOCAL", f"{MARK} knee of DOE"
    inner = Dataset()
    inner.ConceptNameCodeSequence = Sequence([local])
    code.ConceptCodeSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([code])
    out, _ = Deidentifier(b"k")(_encoded(ds, encoding))
    region = out.AnatomicRegionSequence[0]
    assert region.CodeMeaning == "Basic Application Confidentiality Profile" and region.CodeValue == "113100"
    assert region.ConceptCodeSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "KNEE-7 (99LOCAL)"
    assert MARK.encode() not in part10(out)


TIMES_NAMED_IN_ISSUE_14 = ["StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime"]


@pytest.mark.parametrize("encoding", ["dataset", "explicit", "implicit"])
def test_times_move_with_modified_dates_and_stay_with_full_dates(encoding):
    ds = phantom_dataset(16, 16)
    for n, keyword in enumerate(TIMES_NAMED_IN_ISSUE_14):
        setattr(ds, keyword, f"0{n}1500.25")
    ds.AcquisitionDateTime = "20240105001500.25+0100"
    deid = Deidentifier(b"k")
    seconds = deid._patient(copy.deepcopy(ds)).second_shift
    out, _ = deid(_encoded(ds, encoding))
    for n, keyword in enumerate(TIMES_NAMED_IN_ISSUE_14):
        moved = str(out[keyword].value)
        assert moved != f"0{n}1500.25" and moved.endswith(".25"), keyword
        assert (int(moved[:2]) * 3600 + int(moved[2:4]) * 60 + int(moved[4:6]) - (n * 3600 + 900)) % 86400 == seconds
    # Intervals within the day survive: the acquisition stays 3 h after the study.
    assert str(out.AcquisitionDateTime)[8:] == str(out.StudyTime) + "+0100"
    kept, _ = Deidentifier(b"k", DeidConfig(retain_longitudinal_dates=True))(_encoded(ds, encoding))
    assert [str(kept[k].value) for k in TIMES_NAMED_IN_ISSUE_14] == [f"0{n}1500.25" for n in range(5)]
    assert kept.LongitudinalTemporalInformationModified == "UNMODIFIED"


@pytest.mark.parametrize(
    "value, seconds, expected",
    [("0930", 3600, "1030"), ("09", 5400, "10"), ("235959.5", 2, "000001.5"), ("09:30:00", 60, "093100"),
     ("2500", 1, ""), ("abc", 1, ""), ("", 1, "")],
)
def test_time_shift_keeps_the_precision_of_each_value(value, seconds, expected):
    from service.archive.deid import _shift_time

    assert _shift_time(value, seconds) == expected


@pytest.mark.parametrize("encoding", ["dataset", "explicit", "implicit"])
def test_dummy_binary_values_keep_their_length_and_say_nothing(encoding):
    # D on binary VRs (Flow Identifier OB, and a number through the same rule): zeros.
    from service.archive import deid as module

    ds = phantom_dataset(16, 16)
    ds.add_new(0x00340002, "OB", b"PHIMARK!")  # Flow Identifier, D
    out, _ = Deidentifier(b"k")(_encoded(ds, encoding))
    assert bytes(out[0x00340002].value) == bytes(8)
    number = Dataset()
    number.add_new(0x00280010, "US", 512)
    module._set_bytes(number, 0x00280010, "US", module._raw_bytes(number, 0x00280010))
    assert number.Rows == 0
