"""Stored headers (the dataset before Pixel Data, PS3.10 §7.1), parsed once and reused while the file is unchanged.

Queries answer the attributes the index does not hold from a stored header (:mod:`service.archive.query`:
Bits Allocated of an instance, Performed Procedure Step Start Date of a series), and viewers repeat the same
searches: parsing a header with pydicom cost more than everything else in a one-match QIDO-RS search. A
parsed header is reused only while its file has the same device, inode, size and modification time, so an
instance replaced under the same path (written to a new file and renamed over the old one) is read anew.

Cached datasets are shared between threads and must be treated as read-only: every element is converted
when the header is read, so reading them later changes nothing.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

# Headers kept, least recently used dropped first; a parsed header of a radiograph is a few tens of kB.
CAPACITY = 1024


def _convert_all(ds: Dataset) -> None:
    """Turn every raw element (top level and inside sequences) into a DataElement now."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _convert_all(item)


class HeaderCache:
    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[tuple[int, int, int, int], Dataset]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path | str) -> Dataset:
        """The header of the file at ``path``; pydicom's exception when it cannot be read."""
        name = os.fspath(path)
        st = os.stat(name)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._items.get(name)
            if hit is not None and hit[0] == identity:
                self._items.move_to_end(name)
                return hit[1]
        ds = pydicom.dcmread(name, stop_before_pixels=True)
        _convert_all(ds)
        with self._lock:
            self._items[name] = (identity, ds)
            self._items.move_to_end(name)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return ds

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


HEADERS = HeaderCache()
