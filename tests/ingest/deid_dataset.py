"""A dataset that carries every attribute of PS3.15 Table E.1-1, each holding a planted, findable value.

Text values contain :data:`MARK`, UIDs start with :data:`MARK_UID_ROOT`, dates and times are
:data:`MARK_DATE` / :data:`MARK_TIME`, binary values are :data:`MARK_BYTES`; every sequence holds one
item with a person name, a free-text comment, an instance UID and a coded concept whose meaning is
free text. After de-identification none of them may be found anywhere (except what a declared option
keeps, which :func:`planted` leaves out of the markers).
"""

from __future__ import annotations

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive import deid_table
from service.archive.deid import table_action
from service.config import DeidConfig

MARK = "PHIMARK"
MARK_UID_ROOT = "1.2.3.4.77777."
MARK_DATE = "19730517"
MARK_TIME = "171717.171717"
MARK_BYTES = b"PHIMARK!"
MARK_MEANING = "PHIMARK CODE MEANING"

# Attributes that do not belong in a dataset (command group, File Meta, DICOMDIR records) or that the
# dataset needs with a real value to be stored at all.
SKIPPED_GROUPS = (0x0000, 0x0002, 0x0004)


def table_vr(tag: int) -> str:
    """The VR to plant a value with: the dictionary's (the first of "US or SS"), else from the name."""
    if dictionary_has_tag(tag):
        return dictionary_VR(tag).split(" or ")[0]
    name = deid_table.TABLE[tag][0]
    if name.endswith("Sequence"):
        return "SQ"
    if name.endswith("DateTime"):
        return "DT"
    return "UR" if name.endswith("URI") else "LO"


def planted_value(vr: str, n: int):
    """A value for ``vr`` that carries a marker (and is valid for the VR)."""
    text = {
        "DA": MARK_DATE, "TM": MARK_TIME, "DT": MARK_DATE + MARK_TIME, "UI": f"{MARK_UID_ROOT}{n}",
        "PN": f"{MARK}^DOE{n}", "AS": "045Y", "DS": "12.5", "IS": "42", "UR": f"http://{MARK.lower()}.example/{n}",
        "CS": f"{MARK}{n}"[:16], "AE": f"{MARK}{n}"[:16], "SH": f"{MARK}{n}"[:16],
    }
    if vr in text:
        return text[vr]
    if vr in ("LO", "LT", "ST", "UT", "UC"):
        return f"{MARK} free text {n}"
    if vr == "SQ":
        return Sequence([marked_item(n)])
    if vr in ("US", "SS"):
        return 1234
    return MARK_BYTES  # OB, OW, UN, ...


def marked_item(n: int) -> Dataset:
    """A sequence item with what a careless modality puts anywhere: a name, a comment, a UID, a code."""
    item = Dataset()
    item.CodeValue = "113100"  # a code pydicom knows, with a meaning that is not the standard's
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = MARK_MEANING
    item.add_new(0x0040A123, "PN", f"{MARK}^NESTED{n}")  # Person Name, X
    item.add_new(0x00204000, "LT", f"{MARK} nested comment {n}")  # Image Comments, X
    item.add_new(0x00081155, "UI", f"{MARK_UID_ROOT}9{n}")  # Referenced SOP Instance UID, U
    local = Dataset()  # a local code: its meaning is replaced by the code itself
    local.CodeValue = "L1"
    local.CodingSchemeDesignator = "99LOCAL"
    local.CodeMeaning = f"{MARK} local meaning"
    item.ConceptNameCodeSequence = Sequence([local])
    return item


def planted(ds: Dataset, cfg: DeidConfig | None = None) -> dict[int, object]:
    """Add every Table E.1-1 attribute to ``ds`` (but :data:`SKIPPED_GROUPS` and what ``ds`` already
    has); returns tag -> planted value. Attributes an option of ``cfg`` keeps get a plain value
    without a marker, since keeping them is what the option declares."""
    cfg = cfg or DeidConfig()
    values: dict[int, object] = {}
    for n, tag in enumerate(sorted(deid_table.TABLE), start=1):
        if tag >> 16 in SKIPPED_GROUPS or tag in ds:
            continue
        vr = table_vr(tag)
        value = planted_value(vr, n)
        if table_action(tag, cfg) == "K" and vr != "SQ":  # a kept sequence's items are still cleaned
            value = {"CS": "O", "AS": "045Y", "DA": "20200101", "TM": "120000", "DT": "20200101120000", "UI": "1.2.3.4.5.6", "DS": "1", "IS": "1"}.get(vr, "KEPT-BY-OPTION")
            if vr in ("OB", "OW", "UN"):
                value = b"KEPT"
        ds.add_new(tag, vr, value)
        values[tag] = value
    return values


def markers() -> list[bytes]:
    return [MARK.encode(), MARK.lower().encode(), MARK_UID_ROOT.encode(), MARK_DATE.encode(), MARK_TIME.encode(), MARK_BYTES]
