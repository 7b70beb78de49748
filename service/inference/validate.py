"""Checking a generation request's arguments before any work: every bad value gets a message that says
what to send instead (the servicer answers it as INVALID_ARGUMENT)."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from models.registry import RegistryError, parse_ref, validate_name
from models.seeds import MAX_SEED

if TYPE_CHECKING:
    from models.conditions import ConditionSpace

# Beyond about 2 the truncation trick extrapolates away from the mean into images no model was trained
# to make (Brock et al. 2019, BigGAN, section 3.1; Karras et al. 2019, StyleGAN, appendix B).
MAX_PSI = 2.0


# An error message quotes at most this many characters of what a client sent: enough to recognise the
# value, never a way to reflect a client's payload (megabytes of it, or control characters) back.
ECHO_LIMIT = 32
# A model reference is a name of 1-64 characters (models/registry.py) and an optional ":vN".
MAX_REF_LENGTH = 80
_REF_FORM = "a model name (1-64 letters, digits, '.', '_' or '-') or name:vN"


class InvalidRequest(ValueError):
    """An argument out of range; the message names the field."""


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """Client input as an error message may quote it: its first ``limit`` characters, escaped, and its
    length when there is more."""
    text = str(value)
    quoted = repr(text[:limit])
    return quoted if len(text) <= limit else f"{quoted}... ({len(text)} characters)"


def plan_seeds(count: int, seeds: Sequence[int], first_seed: int | None, max_count: int) -> list[int]:
    """The seeds a request asks for.

    ``seeds`` explicit (then ``count`` is 0 or their number), or ``first_seed`` with ``count``
    (consecutive seeds), or only ``count`` (seeds drawn by the server and reported with each image).
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) > max_count:
        raise InvalidRequest(f"{len(seeds)} seeds is more than this server's limit of {max_count} images per request; split the request")
    if seeds:
        if first_seed is not None:
            raise InvalidRequest("give either seeds or first_seed, not both")
        if count not in (0, len(seeds)):
            raise InvalidRequest(f"count is {count} but {len(seeds)} seeds were given; leave count 0 or make it match")
        bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
        if bad:
            raise InvalidRequest(f"seed {bad[0]} is outside 0..{MAX_SEED}")
        return seeds
    if count < 1:
        raise InvalidRequest("count must be at least 1 (or give seeds)")
    if count > max_count:
        raise InvalidRequest(f"count {count} is more than this server's limit of {max_count} images per request; split the request")
    if first_seed is not None:
        if not 0 <= first_seed <= MAX_SEED:
            raise InvalidRequest(f"first_seed {first_seed} is outside 0..{MAX_SEED}")
        if first_seed + count - 1 > MAX_SEED:
            raise InvalidRequest(f"first_seed {first_seed} with count {count} runs past the largest seed {MAX_SEED}")
        return list(range(first_seed, first_seed + count))
    return [secrets.randbelow(MAX_SEED + 1) for _ in range(count)]


def check_psi(psi: float | None) -> float:
    """Truncation psi: 1 when not given; otherwise finite and within 0..:data:`MAX_PSI`."""
    if psi is None:
        return 1.0
    psi = float(psi)
    if math.isnan(psi) or math.isinf(psi):
        raise InvalidRequest(f"truncation_psi must be a number, not {psi}")
    if psi < 0:
        raise InvalidRequest(f"truncation_psi {psi:g} is negative; use 0 (the mean image) to {MAX_PSI:g} (1 = no truncation)")
    if psi > MAX_PSI:
        raise InvalidRequest(f"truncation_psi {psi:g} is above {MAX_PSI:g}; use 0 to {MAX_PSI:g} (1 = no truncation)")
    return psi


def check_model_ref(ref: str) -> str:
    """A well-formed model reference, checked here so that no later message quotes more of it than it should."""
    ref = (ref or "").strip()
    if not ref:
        raise InvalidRequest("model is empty; give a model name, or name:vN for a version (ListModels shows them)")
    try:
        if len(ref) > MAX_REF_LENGTH or not ref.isprintable():
            raise RegistryError("too long")
        parse_ref(ref)
    except RegistryError:
        raise InvalidRequest(f"model {shown(ref)} is not {_REF_FORM}") from None
    return ref


def check_model_name(name: str) -> str:
    """A well-formed model name (ListModels' filter)."""
    try:
        return validate_name(name) if len(name) <= MAX_REF_LENGTH else validate_name("")
    except RegistryError:
        raise InvalidRequest(f"name {shown(name)} is not a model name (1-64 letters, digits, '.', '_' or '-')") from None


def check_request_id(request_id: str) -> str:
    """Request ids go into logs: printable, at most 128 characters."""
    if len(request_id) > 128 or not request_id.isprintable():
        raise InvalidRequest(f"request_id {shown(request_id)} is not at most 128 printable characters")
    return request_id


def check_condition(space: "ConditionSpace | None", given: Mapping[str, str | None], model_ref: str = "the model") -> dict[str, str]:
    """The condition a request gives (field -> value; None or "" for fields not given), checked against
    a model's :class:`~models.conditions.ConditionSpace`: {} for an unconditional model given none, the
    values spelled as the model knows them for a conditional one. An unknown field or value, a missing
    field, or a condition for an unconditional model is an :class:`InvalidRequest` naming what it knows."""
    from models.conditions import ConditionError

    asked = {k: str(v).strip() for k, v in given.items() if v is not None and str(v).strip()}
    if space is None:
        if asked:
            raise InvalidRequest(f"{model_ref} is unconditional: it takes no {', '.join(sorted(asked))}; leave it out, or use a conditional model")
        return {}
    for name, value in asked.items():
        # No known value is this long; refusing here keeps the message to a short prefix of client input.
        if len(value) > ECHO_LIMIT:
            raise InvalidRequest(f"{model_ref}: {name} {shown(value)} is not one this model was trained on; its conditions: {space.describe()}")
    try:
        return space.normalize(asked)
    except ConditionError as exc:
        raise InvalidRequest(f"{model_ref}: {exc}") from None


def check_bit_depth(bit_depth: int) -> int:
    """GenerateStudy's ``bit_depth``: 8 or 16 (0, the proto default, is 8)."""
    bits = bit_depth or 8
    if bits not in (8, 16):
        raise InvalidRequest(f"bit_depth {bit_depth} is not supported; use 8 or 16")
    return bits


def check_destination(destination: str, peers: Sequence[Any]) -> str:
    """A study's ``destination_ae_title``: empty (the configured default) or a ``dicom.peers`` AE title with a port."""
    destination = destination.strip()
    peer = next((p for p in peers if p.ae_title == destination), None)
    if destination and (peer is None or peer.port is None):
        known = ", ".join(p.ae_title for p in peers if p.port is not None) or "none"
        raise InvalidRequest(f"destination_ae_title {shown(destination)} is not a configured DICOM peer with a port (dicom.peers; known: {known})")
    return destination


def check_series_description(text: str) -> str:
    """Series Description is LO: at most 64 characters (PS3.5 §6.2)."""
    if len(text) > 64:
        raise InvalidRequest("series_description is longer than 64 characters (LO, PS3.5 §6.2)")
    return text
