"""Dataset versions: normalized images on disk, and the loader that turns them into training tensors.

Layout (ARCHITECTURE.md "Data contracts")::

    <root>/<name>/v<N>/images.npy        (N, H, W) uint8 or uint16, a plain .npy file (memory-mappable)
    <root>/<name>/v<N>/manifest.jsonl    one JSON object per image, in image order
    <root>/<name>/v<N>/dataset.json      format, name, version, resolution, dtype, count, content_hash,
                                         created_at, parameters, filters, counts, skipped

A version never changes once written: :class:`DatasetWriter` fills a hidden temporary folder beside the
versions and renames it to the next free ``v<N>`` only when it is complete, so a reader sees a whole
version or none. The content hash covers the array's dtype and shape, the pixel bytes and each
manifest row without its provenance fields (:data:`PROVENANCE_FIELDS`: UIDs, which de-identification
remaps per store, the stored file's sha256, the sending AE), in image order; nothing that depends on
when or where it was built. With ``commit(order_by_content=True)`` (what ``dataset build`` does) the
rows are first sorted by (pixel sha256, content row), so the same images with the same labels give the
same order and the same hash in any home (``content_hash_method`` in dataset.json).

:class:`ImageDataset` maps item ``i`` to a float32 tensor ``(channels, H, W)`` in [-1, 1]. With
``xflip`` the dataset is twice as long and items ``N..2N-1`` are the mirror images of ``0..N-1``, as
StyleGAN's ``--mirror`` (Karras et al. 2020, "Training GANs with limited data", §2 and Appendix A):
the flip is part of the index, not random, so a sampler's order alone fixes every batch and resume is
exact. It is an ordinary map-style dataset, so ``DistributedSampler`` and ``DataLoader`` workers work
with it; the memory map is opened lazily in each process, never pickled.

With ``conditions`` (a :class:`models.conditions.ConditionSpace`) an item is ``(image, c)``, ``c`` the
one-hot condition vector of the image's manifest labels (``body_part``, ``view``, ``finding`` ...), and
only images whose every field has a value of the space take part (the others are counted in
``left_out``): an image of unknown or mixed body part cannot teach a body-part condition.

This module uses numpy and torch only (no pydicom, no service code), so a researcher can use it alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from models.conditions import ConditionSpace
from models import versions as versioned
from models.fileio import fsync_path

FORMAT = "synthpacs-dataset/1"
IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.jsonl"
INFO_FILE = "dataset.json"
DTYPES = ("uint8", "uint16")

# Manifest fields that say where an image came from in one store, not what it is: left out of the hash.
PROVENANCE_FIELDS = frozenset({"index", "sop_instance_uid", "series_uid", "study_uid", "sha256", "source", "path", "sop_class_uid", "transfer_syntax_uid"})
CONTENT_HASH_METHOD = "pixels+manifest-without-provenance/2"
# The .npy header DatasetWriter writes has this fixed size, so the final shape can be written over the
# provisional one in place (NumPy format 1.0: 10-byte preamble + header, 64-byte aligned).
_NPY_HEADER_BYTES = 128


class DatasetError(Exception):
    """A dataset folder that cannot be used; the message names the file and the problem."""


class DatasetNotFound(DatasetError, LookupError):
    """No dataset (or version) by that name; the message lists what exists."""


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    path: Path
    info: dict[str, Any]  # dataset.json

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def resolution(self) -> int:
        return int(self.info["resolution"])

    @property
    def count(self) -> int:
        return int(self.info["count"])

    @property
    def dtype(self) -> str:
        return str(self.info["dtype"])

    @property
    def content_hash(self) -> str:
        return str(self.info["content_hash"])

    @property
    def images_path(self) -> Path:
        return self.path / IMAGES_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def manifest(self) -> Iterator[dict[str, Any]]:
        """The manifest rows, in image order."""
        with open(self.manifest_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def validate_name(name: str) -> str:
    if not versioned.is_name(name):
        raise ValueError(f"dataset name {name!r} is not valid: use {versioned.NAME_RULE}")
    return name


def parse_dataset_ref(ref: str) -> tuple[str, int | None]:
    """``"NAME"`` -> (NAME, None); ``"NAME@vN"`` (or ``NAME@N``, ``NAME:vN``: :mod:`models.versions`) -> (NAME, N)."""
    if not isinstance(ref, str):
        raise ValueError(f"dataset reference {ref!r} is not NAME or NAME@vN")
    name, version = versioned.split_ref(ref)
    if not versioned.is_name(name):
        raise ValueError(f"dataset reference {ref!r} is not NAME or NAME@vN (NAME: {versioned.NAME_RULE})")
    if version is None:
        return name, None
    number = versioned.parse_version(version)
    if number is None:
        raise ValueError(f"dataset reference {ref!r}: the version must be a number from 1 up, as in {name}@v1")
    return name, number


def read_version(path: Path) -> DatasetVersion:
    """The dataset version stored in folder ``path`` (the one holding dataset.json)."""
    path = Path(path)
    info_path = path / INFO_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetNotFound(f"{path} is not a dataset version: it has no {INFO_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{info_path} is not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetError(f"{info_path} is not a {FORMAT} description (format: {info.get('format') if isinstance(info, dict) else None!r})")
    missing = [k for k in ("name", "version", "resolution", "dtype", "count", "content_hash") if k not in info]
    if missing:
        raise DatasetError(f"{info_path} lacks {', '.join(missing)}")
    if info["dtype"] not in DTYPES:
        raise DatasetError(f"{info_path}: dtype {info['dtype']!r} is not one of {', '.join(DTYPES)}")
    return DatasetVersion(str(info["name"]), int(info["version"]), path, info)


def list_datasets(root: Path) -> list[DatasetVersion]:
    """Every complete version under ``root``, sorted by name then version.

    A folder that is not a readable version (a foreign folder, a damaged dataset.json) is left out with
    a warning rather than hiding every other dataset.
    """
    root = Path(root)
    found: list[DatasetVersion] = []
    if not root.is_dir():
        return found
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and versioned.is_name(p.name)):
        for _number, vdir in versioned.version_folders(name_dir):
            try:
                found.append(read_version(vdir))
            except DatasetError as exc:
                warnings.warn(f"skipping {vdir}: {exc}", stacklevel=2)
    found.sort(key=lambda d: (d.name, d.version))
    return found


def resolve_dataset(root: Path, ref: str | os.PathLike[str]) -> DatasetVersion:
    """``NAME`` (its latest version), ``NAME@vN``, or the path of a version folder."""
    if isinstance(ref, os.PathLike) or (isinstance(ref, str) and os.sep in ref):
        return read_version(Path(ref))
    name, version = parse_dataset_ref(str(ref))
    found = [d for d in list_datasets(root) if d.name == name]
    if not found:
        names = sorted({d.name for d in list_datasets(root)})
        have = ", ".join(names) if names else "none yet (build one with `synthpacs dataset build NAME`)"
        raise DatasetNotFound(f"no dataset named {name!r} in {root}; datasets: {have}")
    picked = versioned.pick_version(found, version, lambda d: d.version)
    if picked is not None:
        return picked
    raise DatasetNotFound(f"dataset {name!r} has no version {version}; versions: {', '.join(f'v{d.version}' for d in found)}")


def load_images(dv: DatasetVersion, mmap: bool = True) -> np.ndarray:
    """The (N, H, W) array, memory-mapped read-only by default; checked against dataset.json."""
    try:
        arr = np.load(dv.images_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{dv.images_path} is missing") from None
    except ValueError as exc:
        raise DatasetError(f"{dv.images_path} is not a readable .npy array ({exc})") from None
    expected = (dv.count, dv.resolution, dv.resolution)
    if arr.shape != expected or arr.dtype != np.dtype(dv.dtype):
        raise DatasetError(
            f"{dv.images_path} holds {arr.dtype} {arr.shape}, but {INFO_FILE} says {dv.dtype} {expected}"
        )
    return arr


class ImageDataset(Dataset):
    """A dataset version as training tensors: float32 ``(channels, H, W)`` in [-1, 1].

    ``dataset``: a :class:`DatasetVersion`, a version folder, or a reference ``NAME[@vN]`` resolved under
    ``root``. ``xflip``: append the mirrored copies (items ``N..2N-1``). ``channels``: 1, or more to
    repeat the gray channel (e.g. 3 for networks that expect RGB).
    """

    def __init__(
        self, dataset: DatasetVersion | str | Path, xflip: bool = False, channels: int = 1, root: Path | None = None,
        conditions: ConditionSpace | None = None,
    ):
        if isinstance(dataset, DatasetVersion):
            dv = dataset
        elif root is not None and not Path(dataset).is_dir():
            dv = resolve_dataset(Path(root), str(dataset))
        else:
            dv = read_version(Path(dataset))
        if int(channels) < 1:
            raise ValueError(f"channels must be at least 1, not {channels}")
        self.version = dv
        self.xflip = bool(xflip)
        self.channels = int(channels)
        self.count = dv.count
        self.resolution = dv.resolution
        self._scale = 2.0 / float(np.iinfo(np.dtype(dv.dtype)).max)
        self._images: np.ndarray | None = None
        load_images(dv)  # fail now, in the caller's process, if the files do not match
        self.conditions = conditions
        self.rows: np.ndarray | None = None  # dataset image index of each item (conditional only)
        self.labels: np.ndarray | None = None  # (count, c_dim) one-hot vectors of those images
        self.left_out = 0
        if conditions is not None:
            self._read_labels(conditions)

    def _read_labels(self, space: ConditionSpace) -> None:
        rows, labels = [], []
        for i, row in enumerate(self.version.manifest()):
            cond = {name: str(row.get(name) or "").strip() for name in space.names}
            if not all(cond.values()) or any(v.upper() not in {x.upper() for x in space.values(k)} for k, v in cond.items()):
                self.left_out += 1
                continue
            rows.append(i)
            labels.append(space.encode(cond))
        if len(rows) + self.left_out != self.version.count:
            raise DatasetError(f"{self.version.manifest_path} has {len(rows) + self.left_out} rows for {self.version.count} images")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.stack(labels) if labels else np.zeros((0, space.c_dim), np.float32)
        self.count = len(rows)

    def __len__(self) -> int:
        return self.count * (2 if self.xflip else 1)

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = load_images(self.version, mmap=True)
        return self._images

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {n} items")
        flip = i >= self.count
        item = i - self.count if flip else i
        img = self.images[int(self.rows[item]) if self.rows is not None else item]
        if flip:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        x.mul_(self._scale).sub_(1.0)
        x = x.unsqueeze(0)
        x = x.expand(self.channels, -1, -1).contiguous() if self.channels > 1 else x
        if self.labels is not None:
            return x, torch.from_numpy(self.labels[item])
        return x

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # each DataLoader worker maps the file itself
        return state


# -- writing -------------------------------------------------------------------------------------------


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(dtype), shape)
    body_len = _NPY_HEADER_BYTES - 10
    if len(header) + 1 > body_len:
        raise ValueError(f"shape {shape} does not fit the fixed .npy header")
    header = header.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + header.encode("latin1")


class DatasetWriter:
    """Writes one new version: images streamed into ``images.npy``, then committed atomically.

    ``capacity`` is the most images it may hold (the candidates); fewer may be written, and the array
    is trimmed at :meth:`commit`. Use as a context manager: an exception discards the temporary folder.
    Images must be written in order (``append``) so the version's order is the caller's order.

    Rows go into the file with ``pwrite`` and are synced every :data:`SYNC_BYTES`, so the disk works
    while the caller is still producing images and the commit has little left to flush. The content
    hash is computed as rows arrive, on the assumption that every candidate gives an image (its header
    names the final count); only when some were skipped is the file read again at commit.
    """

    SYNC_BYTES = 8 << 20

    def __init__(self, root: Path, name: str, resolution: int, capacity: int, dtype: str = "uint8"):
        validate_name(name)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if int(resolution) < 1 or int(capacity) < 0:
            raise ValueError("resolution must be positive and capacity not negative")
        self.root = Path(root)
        self.name = name
        self.resolution = int(resolution)
        self.dtype = np.dtype(dtype)
        self.capacity = int(capacity)
        self.count = 0
        self.name_dir = self.root / name
        self.name_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.name_dir / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
        self.tmp.mkdir()
        self._images_path = self.tmp / IMAGES_FILE
        self._manifest = open(self.tmp / MANIFEST_FILE, "w", encoding="utf-8", newline="\n")
        self._manifest_hash = hashlib.sha256()
        self._row_bytes = self.resolution**2 * self.dtype.itemsize
        self._fd: int | None = os.open(self._images_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        header = _npy_header(self.dtype, (self.capacity, self.resolution, self.resolution))
        self._pwrite(header, 0)
        os.ftruncate(self._fd, _NPY_HEADER_BYTES + self.capacity * self._row_bytes)
        self._unsynced = 0
        self._running_hash: Any = self._hash_start(self.capacity)
        self._closed = False

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if not self._closed:
            self.abort()

    def _hash_start(self, count: int) -> Any:
        h = hashlib.sha256()
        h.update(f"{FORMAT}\n{self.dtype.str}\n{(count, self.resolution, self.resolution)}\n".encode())
        return h

    def _pwrite(self, data: Any, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data).cast("B")
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def append(self, image: np.ndarray, row: Mapping[str, Any]) -> int:
        """Add one image (H, W) of the dataset's dtype and its manifest row; returns its index."""
        if self._closed:
            raise RuntimeError("this writer is closed")
        if self.count >= self.capacity:
            raise ValueError(f"the writer was opened for {self.capacity} images")
        expected = (self.resolution, self.resolution)
        if image.shape != expected or image.dtype != self.dtype:
            raise ValueError(f"image is {image.dtype} {image.shape}; this dataset takes {self.dtype} {expected}")
        data = np.ascontiguousarray(image)
        self._pwrite(data, _NPY_HEADER_BYTES + self.count * self._row_bytes)
        self._running_hash.update(data)
        self._unsynced += self._row_bytes
        if self._unsynced >= self.SYNC_BYTES:
            assert self._fd is not None
            os.fdatasync(self._fd)
            self._unsynced = 0
        line = json.dumps({"index": self.count, **row}, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
        self._manifest.write(line)
        self._manifest_hash.update(_content_line(row))
        self.count += 1
        return self.count - 1

    def written(self) -> np.ndarray:
        """The images appended so far (a read-only memory map of the file, valid until commit)."""
        if self.count == 0:
            return np.zeros((0, self.resolution, self.resolution), self.dtype)
        return np.memmap(self._images_path, dtype=self.dtype, mode="r", offset=_NPY_HEADER_BYTES,
                         shape=(self.count, self.resolution, self.resolution))

    def _order_by_content(self) -> None:
        """Rewrite images and manifest sorted by (pixel sha256, content row); provenance breaks no tie
        that matters (rows equal in both keys are the same image with the same labels)."""
        images = self.written()
        rows = [json.loads(line) for line in (self.tmp / MANIFEST_FILE).read_text(encoding="utf-8").splitlines()]
        keys = [(hashlib.sha256(np.ascontiguousarray(images[i])).hexdigest(), _content_line(rows[i])) for i in range(self.count)]
        order = sorted(range(self.count), key=keys.__getitem__)
        if order == list(range(self.count)):
            return
        sorted_path = self.tmp / (IMAGES_FILE + ".sorted")
        fd = os.open(sorted_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = _NPY_HEADER_BYTES
            os.pwrite(fd, _npy_header(self.dtype, (self.capacity, self.resolution, self.resolution)), 0)
            for i in order:
                view = memoryview(np.ascontiguousarray(images[i])).cast("B")
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
            os.fsync(fd)
        finally:
            os.close(fd)
        del images
        assert self._fd is not None
        os.close(self._fd)
        os.replace(sorted_path, self._images_path)
        self._fd = os.open(self._images_path, os.O_RDWR)
        self._manifest_hash = hashlib.sha256()
        with open(self.tmp / MANIFEST_FILE, "w", encoding="utf-8", newline="\n") as f:
            for new_index, i in enumerate(order):
                row = {**rows[i], "index": new_index}
                f.write(json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n")
                self._manifest_hash.update(_content_line(row))
        self._running_hash = None  # the pixels' order changed: hash them again from the file

    def _content_hash(self) -> str:
        if self.count == self.capacity and self._running_hash is not None:
            h = self._running_hash.copy()
        else:
            h = self._hash_start(self.count)
            images = self.written()
            step = max(1, (64 << 20) // self._row_bytes)
            for start in range(0, self.count, step):
                h.update(np.ascontiguousarray(images[start : min(self.count, start + step)]))
        h.update(self._manifest_hash.digest())
        return h.hexdigest()

    def commit(
        self,
        parameters: Mapping[str, Any] | None = None,
        filters: Mapping[str, Any] | None = None,
        counts: Mapping[str, Any] | None = None,
        skipped: int = 0,
        extra_files: Mapping[str, str | bytes] | None = None,
        extra_info: Mapping[str, Any] | None = None,
        order_by_content: bool = False,
    ) -> DatasetVersion:
        """Trim, hash, describe and publish as the next version; returns it.

        ``order_by_content`` sorts the images by content first (module docstring), so that the order and
        the hash do not depend on the order the caller found them in (a store's UIDs).

        ``extra_files`` (file name -> text or bytes), such as a build report or a contact sheet, are
        written into the version too (they are not part of the content hash). ``extra_info`` adds keys
        to dataset.json beside the standard ones (which it cannot replace).
        """
        if self._closed:
            raise RuntimeError("this writer is closed")
        for fname in extra_files or {}:
            if "/" in fname or fname.startswith(".") or fname in (IMAGES_FILE, MANIFEST_FILE, INFO_FILE):
                raise ValueError(f"cannot write an extra file named {fname!r}")
        self._manifest.close()
        if order_by_content and self.count > 1:
            self._order_by_content()
        content_hash = self._content_hash()
        assert self._fd is not None
        self._pwrite(_npy_header(self.dtype, (self.count, self.resolution, self.resolution)), 0)
        os.ftruncate(self._fd, _NPY_HEADER_BYTES + self.count * self._row_bytes)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        for fname, text in (extra_files or {}).items():
            if isinstance(text, bytes):
                (self.tmp / fname).write_bytes(text)
            else:
                (self.tmp / fname).write_text(text, encoding="utf-8")
        info: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": 0,  # set below, once the version number is taken
            "resolution": self.resolution,
            "dtype": self.dtype.name,
            "count": self.count,
            "content_hash": content_hash,
            "content_hash_method": CONTENT_HASH_METHOD,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parameters": dict(parameters or {}),
            "filters": dict(filters or {}),
            "counts": dict(counts or {}),
            "skipped": int(skipped),
        }
        for key, value in (extra_info or {}).items():
            if key in info:
                raise ValueError(f"extra_info cannot replace the dataset.json key {key!r}")
            info[key] = value
        for p in self.tmp.iterdir():
            if p.name != IMAGES_FILE:  # synced above
                fsync_path(p)
        # Take the next version number by renaming: rename() onto a non-empty folder fails, so two
        # writers can never publish the same number.
        while True:
            version = versioned.next_version(self.name_dir)
            info["version"] = version
            (self.tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=False) + "\n", encoding="utf-8")
            fsync_path(self.tmp / INFO_FILE)
            final = self.name_dir / f"v{version}"
            try:
                # Fails (ENOTEMPTY/EEXIST) when a racing writer published this number first.
                os.rename(self.tmp, final)
            except OSError:
                if final.exists():
                    continue
                raise
            break
        fsync_path(self.name_dir)
        self._closed = True
        return read_version(final)

    def abort(self) -> None:
        """Discard everything written; no version appears."""
        if self._closed:
            return
        self._closed = True
        if not self._manifest.closed:
            self._manifest.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def _content_line(row: Mapping[str, Any]) -> bytes:
    """A manifest row without its provenance fields, as canonical JSON bytes (one line)."""
    content = {k: v for k, v in row.items() if k not in PROVENANCE_FIELDS}
    return (json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def write_dataset(
    root: Path,
    name: str,
    images: np.ndarray,
    rows: Iterable[Mapping[str, Any]] | None = None,
    parameters: Mapping[str, Any] | None = None,
    **commit_kwargs: Any,
) -> DatasetVersion:
    """Write an (N, H, W) uint8/uint16 array as the next version of ``name`` (tests, researchers' own data)."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (N, H, H), not {images.shape}")
    rows_list = list(rows) if rows is not None else [{} for _ in range(len(images))]
    if len(rows_list) != len(images):
        raise ValueError(f"{len(images)} images but {len(rows_list)} manifest rows")
    with DatasetWriter(root, name, images.shape[1], len(images), images.dtype.name) as w:
        for img, row in zip(images, rows_list):
            w.append(img, row)
        return w.commit(parameters=parameters, **commit_kwargs)
