"""The DICOM JSON Model (PS3.18 Annex F.2): datasets as ``application/dicom+json``.

pydicom's encoder writes the model (tags as 8 hex digits, ``vr``, ``Value``, PN as component groups,
``InlineBinary``); here it gets the service's Bulk Data rule (F.2.6): a binary value larger than the
threshold is replaced by a ``BulkDataURI`` that WADO-RS's bulkdata resource answers.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

# Binary values up to this size travel inline (base64); larger ones by reference.
BULK_DATA_THRESHOLD = 1024


def tag_hex(tag: int) -> str:
    return f"{int(tag):08X}"


def to_json(ds: Dataset, bulk_uri: Callable[[str], str] | None = None) -> dict:
    """``ds`` in the JSON model; with ``bulk_uri`` (tag in hex -> URI) large binary values become references."""
    if bulk_uri is None:
        return _no_empty_values(ds.to_json_dict(bulk_data_threshold=1 << 62))

    def handler(elem: DataElement) -> str:
        return bulk_uri(tag_hex(elem.tag))

    return _no_empty_values(ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=handler))


def _no_empty_values(obj: dict) -> dict:
    """An attribute with no value, a sequence with no item included, has no "Value" (PS3.18 F.2.5)."""
    for attr in obj.values():
        value = attr.get("Value")
        if value == []:
            del attr["Value"]
        elif attr.get("vr") == "SQ" and value:
            for item in value:
                if isinstance(item, dict):
                    _no_empty_values(item)
    return obj


def dump(items: Iterable[dict]) -> bytes:
    return json.dumps(list(items), separators=(",", ":")).encode()
