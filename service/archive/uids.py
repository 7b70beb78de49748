"""DICOM Unique Identifiers (PS3.5 §9): validation before a UID becomes part of a path, and generation."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

# PS3.5 §9.1: components of digits separated by ".", no leading zero in a component of more than one
# digit, at most 64 characters. Anything else (letters, "/", "..") is refused.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
MAX_UID_LENGTH = 64


class InvalidUID(ValueError):
    """A value that is not a valid DICOM UID; the message says which attribute and why."""


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_UID_LENGTH and bool(_UID_RE.match(value))


def validate_uid(value: object, attribute: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUID` naming ``attribute``."""
    if value is None or value == "":
        raise InvalidUID(f"{attribute} is missing")
    text = str(value)
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUID(f"{attribute} is {len(text)} characters long; PS3.5 §9.1 allows at most 64")
    if not _UID_RE.match(text):
        raise InvalidUID(f"{attribute} is not a DICOM UID (digits and dots only, PS3.5 §9.1)")
    return text


def uuid_uid() -> str:
    """A fresh UID under 2.25 from a random UUID (PS3.5 §B.2); needs no registered root."""
    return f"2.25.{uuid.uuid4().int}"


def new_uid(root: str = "") -> str:
    """A fresh UID under ``root`` (or under 2.25 when root is empty)."""
    if not root or root == "2.25":
        return uuid_uid()
    validate_uid(root + ".1", "UID root")
    suffix = str(uuid.uuid4().int)
    uid = f"{root}.{suffix}"
    return uid[:MAX_UID_LENGTH].rstrip(".") if len(uid) > MAX_UID_LENGTH else uid


def keyed_uid(secret: bytes, original: str, root: str = "2.25") -> str:
    """Map a UID to a new one, the same every time for the same key (consistent remapping, PS3.15 E.3.9).

    The HMAC makes the mapping one-way for anyone without the key, so re-sent instances land on the
    same remapped UIDs and studies stay grouped, yet the original UIDs cannot be recovered.
    """
    digest = hmac.new(secret, original.encode(), hashlib.sha256).digest()
    if not root or root == "2.25":
        # A 128-bit integer formatted as a 2.25 UID, as a UUID would be.
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"
    number = str(int.from_bytes(digest[:16], "big"))
    room = MAX_UID_LENGTH - len(root) - 1
    if room < 10:
        raise InvalidUID(f"UID root {root!r} is too long to leave room for remapped UIDs")
    return f"{root}.{number[:room].lstrip('0') or '0'}"
