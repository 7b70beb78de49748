"""Conditions of a conditional generator: which labels it knows, and their one-hot encoding.

A generator trained on labelled images (body part, view, a finding such as a fracture) is conditioned
on one value per *field*. The fields and their values, in a fixed order, are a :class:`ConditionSpace`;
it is stored in the generator's constructor arguments (``init_kwargs["conditions"]``, a JSON list
``[[field, [value, ...]], ...]``), so a model card alone says which conditions a model accepts. It is a
list, not an object, because the field order fixes the layout of ``c`` and of the generator's input,
and model cards and run files are written with sorted keys.

The encoding is the one NVlabs' StyleGAN code calls ``c``: a float vector of length ``c_dim`` that
concatenates one one-hot block per field, in field order. Every architecture takes ``G(z, psi, c=c)``
with that vector, so the same request, the same provenance and the same sampling code serve a DCGAN
(which turns each block into an embedding) and a StyleGAN3 mapping network with ``c_dim`` (which embeds
the whole vector). An unconditional generator has no ``conditions`` and ignores ``c``.

Values are compared case-insensitively and stored as written in the space (DICOM Code Strings are upper
case: ``HAND``, ``AP``); the field names are the dataset manifest's keys (``body_part``, ``view``,
``finding``). This module uses numpy and torch only.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

# Manifest keys a condition may come from, and the DICOM attribute each fills on a synthetic image.
KNOWN_FIELDS = ("body_part", "view", "finding")
DICOM_ATTRIBUTE = {"body_part": "BodyPartExamined", "view": "ViewPosition"}
# A field a request may leave out, and the value that then stands for it: a value meaning "nothing to
# report". Asking a model conditioned on body part, view and finding for a PA hand asks for a hand with no
# finding; a fracture is asked for by name. Fields without such a value (body part, view) must be given.
ABSENT = {"finding": "NONE"}
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ConditionError(ValueError):
    """A condition the model does not know, or a missing one; the message names the known values."""


@dataclass(frozen=True)
class ConditionSpace:
    """Ordered fields, each with its ordered values."""

    fields: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise ConditionError("a condition space needs at least one field")
        seen = set()
        for name, values in self.fields:
            if not _FIELD_RE.match(name):
                raise ConditionError(f"condition field {name!r} is not a lower-case name like body_part")
            if name in seen:
                raise ConditionError(f"condition field {name!r} is given twice")
            seen.add(name)
            if not values:
                raise ConditionError(f"condition field {name!r} has no values")
            folded = [v.upper() for v in values]
            if any(not v.strip() for v in values) or len(set(folded)) != len(folded):
                raise ConditionError(f"condition field {name!r} has empty or repeated values: {list(values)}")

    @classmethod
    def from_json(cls, obj: Mapping[str, Sequence[str]] | Sequence[Sequence[Any]]) -> "ConditionSpace":
        """From ``{field: [values]}`` (insertion order is the field order) or ``[[field, [values]], ...]``."""
        items = obj.items() if isinstance(obj, Mapping) else obj
        try:
            return cls(tuple((str(name), tuple(str(v) for v in values)) for name, values in items))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConditionError):
                raise
            raise ConditionError(f"conditions must be an object of field -> list of values, not {obj!r}") from None

    def to_json(self) -> list[list[Any]]:
        """``[[field, [values]], ...]``: order-preserving through JSON written with sorted keys."""
        return [[name, list(values)] for name, values in self.fields]

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in self.fields}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(values) for _, values in self.fields)

    @property
    def c_dim(self) -> int:
        return sum(self.sizes)

    def values(self, name: str) -> tuple[str, ...]:
        for n, values in self.fields:
            if n == name:
                return values
        raise ConditionError(f"this model has no condition {name!r}; its conditions: {self.describe()}")

    def describe(self) -> str:
        """``body_part (HAND, HIP, LEG), view (AP, LATERAL)``: for error messages."""
        return "; ".join(f"{name} ({', '.join(values)})" for name, values in self.fields)

    def normalize(self, condition: Mapping[str, str]) -> dict[str, str]:
        """The condition with every field present and every value spelled as in the space.

        A field left out takes its :data:`ABSENT` value when the model knows it (``finding`` -> ``NONE``).
        Raises :class:`ConditionError` for an unknown field, an unknown value, or a missing field, with
        the known fields and values in the message.
        """
        out: dict[str, str] = {}
        given = {str(k): ("" if v is None else str(v)) for k, v in condition.items()}
        for key in given:
            if key not in self.names:
                raise ConditionError(f"this model has no condition {key!r}; its conditions: {self.describe()}")
        for name, values in self.fields:
            raw = given.get(name, "").strip()
            if not raw and ABSENT.get(name, "").upper() in (v.upper() for v in values):
                raw = ABSENT[name]
            if not raw:
                raise ConditionError(f"this model needs a {name} (one of {', '.join(values)}); its conditions: {self.describe()}")
            match = [v for v in values if v.upper() == raw.upper()]
            if not match:
                raise ConditionError(f"{name} {raw!r} is not one this model was trained on; known: {', '.join(values)}")
            out[name] = match[0]
        return out

    def encode(self, condition: Mapping[str, str]) -> np.ndarray:
        """float32 (c_dim,): one one-hot block per field, in field order."""
        cond = self.normalize(condition)
        vec = np.zeros(self.c_dim, np.float32)
        offset = 0
        for name, values in self.fields:
            vec[offset + values.index(cond[name])] = 1.0
            offset += len(values)
        return vec

    def encode_batch(self, conditions: Sequence[Mapping[str, str]], device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, c_dim) float32 tensor; row i is ``encode(conditions[i])``."""
        rows = [self.encode(c) for c in conditions]
        arr = np.stack(rows) if rows else np.zeros((0, self.c_dim), np.float32)
        return torch.from_numpy(arr).to(device)

    def decode(self, vec: Sequence[float] | np.ndarray) -> dict[str, str]:
        """The condition a one-hot vector stands for (inverse of :meth:`encode`)."""
        arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        if arr.shape[0] != self.c_dim:
            raise ConditionError(f"a condition vector of this model has {self.c_dim} entries, not {arr.shape[0]}")
        out, offset = {}, 0
        for name, values in self.fields:
            block = arr[offset : offset + len(values)]
            if not (np.count_nonzero(block) == 1 and block.max() == 1.0):
                raise ConditionError(f"the {name} block of a condition vector is not one-hot: {block.tolist()}")
            out[name] = values[int(block.argmax())]
            offset += len(values)
        return out

    def combinations(self) -> Iterator[dict[str, str]]:
        """Every condition, fields varying last-to-first fastest (itertools.product order)."""
        for combo in itertools.product(*(values for _, values in self.fields)):
            yield dict(zip(self.names, combo))


def label(condition: Mapping[str, str]) -> str:
    """``HAND-AP``: a condition as a short file-name-safe text."""
    return "-".join(re.sub(r"[^A-Za-z0-9]+", "_", str(v)) for v in condition.values()) or "all"


def space_of(generator: torch.nn.Module) -> ConditionSpace | None:
    """The generator's condition space, or None for an unconditional one."""
    conditions = getattr(generator, "init_kwargs", {}).get("conditions")
    return ConditionSpace.from_json(conditions) if conditions else None


def space_of_card(card: Mapping[str, Any]) -> ConditionSpace | None:
    """The condition space a model card describes (its init_kwargs), or None when unconditional."""
    conditions = (card.get("init_kwargs") or {}).get("conditions")
    return ConditionSpace.from_json(conditions) if conditions else None


def vocabulary(rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> tuple[ConditionSpace, dict[str, dict[str, int]], int]:
    """The values each field takes in ``rows`` (sorted), images per value, and rows left out.

    A row with an empty value in any field is left out of conditional training (an image whose body
    part or view is unknown or mixed cannot teach a condition); the count of such rows is returned.
    """
    for f in fields:
        if not _FIELD_RE.match(f):
            raise ConditionError(f"condition field {f!r} is not a lower-case name like body_part")
    counts: dict[str, dict[str, int]] = {f: {} for f in fields}
    seen: set[str] = set()
    left_out = 0
    for row in rows:
        vals = [str(row.get(f) or "").strip() for f in fields]
        seen.update(f for f, v in zip(fields, vals) if v)
        if not all(vals):
            left_out += 1
            continue
        for f, v in zip(fields, vals):
            counts[f][v] = counts[f].get(v, 0) + 1
    empty = [f for f in fields if f not in seen]
    if empty:
        raise ConditionError(f"no image of the dataset has a value for {', '.join(empty)}; cannot condition on it")
    if not any(counts[f] for f in fields):
        raise ConditionError(f"no image of the dataset has a value for every one of {', '.join(fields)}; cannot condition on them together")
    space = ConditionSpace(tuple((f, tuple(sorted(counts[f]))) for f in fields))
    return space, {f: dict(sorted(counts[f].items())) for f in fields}, left_out
