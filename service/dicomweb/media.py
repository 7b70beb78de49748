"""Media types on the wire (PS3.18 8.7): Accept negotiation and multipart/related bodies (RFC 2387).

Responses are written part by part (a generator a streaming response sends as it goes), so a study of
any size leaves the server at the pace the client reads it. Request bodies are parsed where they were
received (:mod:`.stow`): in memory up to a few MB, else from the file they were streamed into, over an
``mmap``, so a large body is never held in memory as a whole.
"""

from __future__ import annotations

import mmap
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Iterator

MULTIPART_RELATED = "multipart/related"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
# PS3.18 8.7.3.5.2: the default transfer syntax of application/dicom and octet-stream bulk data.
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UNCOMPRESSED = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# A parameter value is a token or a quoted string (RFC 9110 5.6.6); an unquoted value runs to the next ";" or
# ",", so ``type=application/octet-stream`` (a "/" is not a token character), as PS3.18's examples, OHIF
# and dcm4che write it, is read whole.
_PARAM_RE = re.compile(rf";\s*({_TOKEN})\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;,]*)")


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept or Content-Type header: ``type/subtype`` with lower-cased parameter names."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def param(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)

    def matches(self, media_type: str) -> bool:
        """Does this range cover ``media_type`` (``*/*``, ``image/*`` or the exact type)?"""
        if self.type == "*/*":
            return True
        major, _, minor = self.type.partition("/")
        want_major, _, _ = media_type.partition("/")
        return self.type == media_type or (minor == "*" and major == want_major)


class BadMediaType(ValueError):
    """An Accept or Content-Type header that cannot be parsed."""


def parse_media_type(text: str) -> MediaRange:
    text = text.strip()
    if not text:
        raise BadMediaType("empty media type")
    main, _, rest = text.partition(";")
    media = main.strip().lower()
    if not re.fullmatch(rf"({_TOKEN}|\*)/({_TOKEN}|\*)", media):
        raise BadMediaType("a media type reads type/subtype")
    params: dict[str, str] = {}
    for name, value in _PARAM_RE.findall(";" + rest if rest else ""):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name.lower()] = value
    q = 1.0
    if "q" in params:
        try:
            q = float(params.pop("q"))
        except ValueError:
            raise BadMediaType("the q parameter must be a number") from None
    return MediaRange(media, params, q)


def _split_header_list(text: str) -> list[str]:
    """Split an Accept header at commas outside quoted strings."""
    out, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [part for part in out if part.strip()]


def parse_accept(header: str | None) -> list[MediaRange]:
    """The Accept header's ranges, best first (q descending, then as written); ``*/*`` when absent."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    return list(_parse_accept(header))


@lru_cache(maxsize=256)
def _parse_accept(header: str) -> tuple[MediaRange, ...]:
    # A client sends the same few Accept headers again and again; the ranges are never changed by callers.
    ranges = [parse_media_type(part) for part in _split_header_list(header)]
    ranges = [r for r in ranges if r.q > 0]
    return tuple(sorted(ranges, key=lambda r: -r.q))


def new_boundary() -> str:
    return "synthpacs-" + secrets.token_hex(16)


def multipart_content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'{MULTIPART_RELATED}; type="{part_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def part_header(boundary: str, content_type: str, location: str | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def close_delimiter(boundary: str) -> bytes:
    """What ends a multipart body after its last part (RFC 2046 §5.1.1)."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def multipart_stream(boundary: str, parts: Iterable[tuple[str, Iterable[bytes], str | None]]) -> Iterator[bytes]:
    """Bytes of a multipart/related body, part by part: each part is (content type, chunks, location)."""
    first = True
    for content_type, chunks, location in parts:
        yield (b"" if first else b"\r\n") + part_header(boundary, content_type, location)
        first = False
        yield from chunks
    yield close_delimiter(boundary)[0 if not first else 2:]


def coalesce(chunks: Iterable[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """The same bytes in pieces of about ``size``: a part header, a small file and the closing delimiter
    leave as one write. A streaming response runs each step of a plain iterator in a worker thread, and
    under load every such hop waits for the scheduler; one per megabyte is enough."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


# -- parsing a received multipart/related body (RFC 2046 §5.1.1) --------------------------------------------


class MalformedMultipart(ValueError):
    """A body that is not a well-formed multipart message; the message says where it went wrong."""


@dataclass(frozen=True)
class Part:
    """One body part: its headers (lower-cased names) and where its content lies in the body."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def boundary_of(content_type: MediaRange) -> str:
    boundary = content_type.param("boundary")
    if not boundary or len(boundary) > 70:
        raise MalformedMultipart("the Content-Type has no boundary parameter (1-70 characters, RFC 2046 §5.1.1)")
    return boundary


def split_parts(body: mmap.mmap | bytes, boundary: str, max_header_bytes: int = 16384) -> list[Part]:
    """Find every part of a complete multipart body; MalformedMultipart unless it is whole.

    The delimiter is CRLF, ``--``, the boundary (the first may start the body without the CRLF); the
    close delimiter adds ``--``. A body without its close delimiter was cut short: nothing in it is used.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    size = len(body)
    if body[: len(delimiter)] == delimiter:
        pos = 0
    else:
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise MalformedMultipart("the body holds no part delimited by the Content-Type's boundary")
        pos += 2
    parts: list[Part] = []
    while True:
        after = pos + len(delimiter)
        if body[after: after + 2] == b"--":
            break  # the close delimiter; what follows is the epilogue
        line_end = body.find(b"\r\n", after)
        if line_end < 0:
            raise MalformedMultipart("the body ends inside a boundary line")
        if body[after:line_end].strip(b" \t"):
            raise MalformedMultipart("a boundary line carries text after the boundary")
        header_start = line_end + 2
        if body[header_start: header_start + 2] == b"\r\n":
            header_end = header_start
        else:
            header_end = body.find(b"\r\n\r\n", header_start, min(size, header_start + max_header_bytes))
            if header_end < 0:
                raise MalformedMultipart(f"part {len(parts) + 1} has no end of headers (CRLF CRLF) within {max_header_bytes} bytes")
        headers = _parse_headers(bytes(body[header_start:header_end]), len(parts) + 1)
        content_start = header_end + (2 if header_end == header_start else 4)
        next_delim = body.find(b"\r\n" + delimiter, content_start)
        if next_delim < 0:
            raise MalformedMultipart(f"part {len(parts) + 1} is not followed by a delimiter: the body was cut short")
        parts.append(Part(headers, content_start, next_delim))
        pos = next_delim + 2
    if not parts:
        raise MalformedMultipart("the body holds no part")
    return parts


def _parse_headers(raw: bytes, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MalformedMultipart(f"part {number} has a header line without a name and a colon")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers
