"""Regenerate :mod:`service.archive.deid_table` (PS3.15 Table E.1-1) from two published encodings of it.

* The Basic Profile column and the attribute list: Kitware's dicom-anonymizer (BSD-3-Clause), its
  ``dicomfields_2026c`` database (``pip install dicom-anonymizer==2.1.0``, the project's ``[dev]`` extra).
* The option columns (Retain Safe Private, UIDs, Device Identity, Institution Identity, Patient
  Characteristics, Longitudinal Full / Modified Dates, Clean Descriptors, Structured Content, Graphics):
  Innolitics' ``dicom-standard`` (MIT), ``standard/confidentiality_profile_attributes.json``, which is
  parsed from the standard's own tables (rev2024b). Attributes the standard added later have no option
  entries there; they get their Basic Profile action whatever the options.

Where both name an attribute, their Basic Profile actions must agree (they did for all 618 shared
attributes when this was written); a disagreement stops the generator, to be settled against PS3.15
Table E.1-1 itself. Usage::

    python -m service.archive.deid_table_gen path/to/confidentiality_profile_attributes.json \\
        > service/archive/deid_table.py
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

KITWARE_DATABASE = "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"
KITWARE_CATEGORIES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# Innolitics' column names -> ours (service.archive.deid_table.OPTIONS).
INNOLITICS_OPTIONS = {
    "rtnSafePrivOpt": "safe_private", "rtnUIDsOpt": "uids", "rtnDevIdOpt": "device", "rtnInstIdOpt": "institution",
    "rtnPatCharsOpt": "patient", "rtnLongFullDatesOpt": "full_dates", "rtnLongModifDatesOpt": "modified_dates",
    "cleanDescOpt": "clean_descriptors", "cleanStructContOpt": "clean_structured", "cleanGraphOpt": "clean_graphics",
}
INNOLITICS_SOURCE = "innolitics/dicom-standard standard/confidentiality_profile_attributes.json (rev2024b, commit 8670abdd)"
KITWARE_SOURCE = "dicom-anonymizer 2.1.0 (Kitware) dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py"

KITWARE_LICENCE = """\
Copyright 2020, Kitware Europe. BSD 3-Clause License:
Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met: 1. Redistributions of source code must retain the
above copyright notice, this list of conditions and the following disclaimer. 2. Redistributions in
binary form must reproduce the above copyright notice, this list of conditions and the following
disclaimer in the documentation and/or other materials provided with the distribution. 3. Neither the
name of the copyright holder nor the names of its contributors may be used to endorse or promote
products derived from this software without specific prior written permission.
THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED
WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A
PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR
ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED
TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING
NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
POSSIBILITY OF SUCH DAMAGE."""

INNOLITICS_LICENCE = """\
Copyright (c) 2017 Innolitics, LLC. MIT License:
Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
following conditions: The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
USE OR OTHER DEALINGS IN THE SOFTWARE."""


def kitware_rows() -> tuple[dict[int, tuple[str, str]], list[tuple[int, int, str, str]]]:
    """(tag -> (name, Basic Profile action), [(value, mask, name, action)]) from dicom-anonymizer.

    The names come from the comment after each tag in its source (the module holds bare tuples).
    """
    module = importlib.import_module(KITWARE_DATABASE)
    names: dict[tuple[int, ...], str] = {}
    # A tuple may be wrapped over several lines, its comment after the closing parenthesis.
    for m in re.finditer(r"\(([0-9xXa-fA-F,\s]+?),?\s*\),\s*#\s*([^\n]+?)\s*$", Path(module.__file__).read_text(), re.M):
        names[tuple(int(part, 16) for part in m.group(1).split(","))] = m.group(2)
    rows: dict[int, tuple[str, str]] = {}
    masked: list[tuple[int, int, str, str]] = []
    for category, action in KITWARE_CATEGORIES.items():
        for entry in getattr(module, category):
            name = names[tuple(entry)]
            if len(entry) == 2:
                tag = (entry[0] << 16) | entry[1]
                if tag in rows:
                    raise SystemExit(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is in two categories")
                rows[tag] = (name, action)
            else:  # (group, element, group mask, element mask)
                group, element, gmask, emask = entry
                masked.append(((group << 16) | element, (gmask << 16) | emask, name, action))
    return rows, masked


def innolitics_options(path: Path) -> tuple[dict[int, tuple[str, str, dict[str, str]]], dict[str, dict[str, str]]]:
    """(tag -> (name, Basic Profile action, options), masked id -> options) from Innolitics' JSON."""
    rows: dict[int, tuple[str, str, dict[str, str]]] = {}
    masked: dict[str, dict[str, str]] = {}
    for entry in json.loads(path.read_text()):
        options = {ours: entry[theirs] for theirs, ours in INNOLITICS_OPTIONS.items() if entry.get(theirs)}
        ident = entry["id"].upper()
        if re.fullmatch(r"[0-9A-F]{8}", ident):
            rows[int(ident, 16)] = (entry["name"], entry["basicProfile"], options)
        else:
            masked[ident] = options
    return rows, masked


def build(innolitics_json: Path) -> str:
    kitware, kitware_masked = kitware_rows()
    innolitics, innolitics_masked = innolitics_options(innolitics_json)
    disagree = [tag for tag in kitware.keys() & innolitics.keys() if kitware[tag][1] != innolitics[tag][1]]
    if disagree:
        listed = ", ".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in sorted(disagree))
        raise SystemExit(f"the sources disagree on the Basic Profile action of {listed}: settle it against PS3.15")
    rows = {tag: (name, action, innolitics.get(tag, ("", "", {}))[2]) for tag, (name, action) in kitware.items()}
    for tag, (name, action, options) in innolitics.items():  # withdrawn since rev2024b: kept, it costs nothing
        rows.setdefault(tag, (name, action, options))
    masked_options = {"50XXXXXX": innolitics_masked.get("50XXXXXX", {}), "60XX3000": innolitics_masked.get("60XX3000", {}),
                      "60XX4000": innolitics_masked.get("60XX4000", {})}
    out = [HEADER.format(kitware=KITWARE_SOURCE, innolitics=INNOLITICS_SOURCE, kitware_licence=_commented(KITWARE_LICENCE),
                         innolitics_licence=_commented(INNOLITICS_LICENCE), count=len(rows))]
    out.append("TABLE: dict[int, tuple[str, str, dict[str, str]]] = {")
    for tag in sorted(rows):
        name, action, options = rows[tag]
        out.append(f"    0x{tag:08X}: ({name!r}, {action!r}, {dict(sorted(options.items()))!r}),")
    out.append("}")
    out.append("")
    out.append("# Repeating groups: (value, mask, name, Basic Profile action, options); a tag matches when tag & mask == value.")
    out.append("MASKED: tuple[tuple[int, int, str, str, dict[str, str]], ...] = (")
    for value, mask, name, action in sorted(kitware_masked):
        key = f"{value >> 16:04X}"[:2] + "XX" + ("XXXX" if mask & 0xFFFF == 0 else f"{value & 0xFFFF:04X}")
        out.append(f"    (0x{value:08X}, 0x{mask:08X}, {name!r}, {action!r}, {dict(sorted(masked_options.get(key, {}).items()))!r}),")
    out.append(")")
    return "\n".join(out) + "\n"


def _commented(text: str) -> str:
    return "\n".join("# " + line if line else "#" for line in text.splitlines())


HEADER = '''"""PS3.15 Table E.1-1 Application Level Confidentiality Profile Attributes, as data ({count} attributes).

GENERATED by ``python -m service.archive.deid_table_gen INNOLITICS_JSON > service/archive/deid_table.py``:
do not edit by hand. Sources (see the generator's docstring):

* attributes and Basic Profile actions: {kitware}
* option columns: {innolitics}

Actions (PS3.15 Table E.1-1a): D dummy value, Z zero length, X remove, K keep, C clean, U replace UIDs
consistently; X/Z, X/D, X/Z/D, Z/D, X/Z/U* depend on the attribute's type in the IOD. Options are the
columns of the table: safe_private, uids, device, institution, patient, full_dates, modified_dates,
clean_descriptors, clean_structured, clean_graphics. tests/ingest/test_deid_table.py compares every row
with the installed dicom-anonymizer.
"""

# Licences of the sources this table is derived from.
{kitware_licence}
#
{innolitics_licence}

OPTIONS = ("safe_private", "uids", "device", "institution", "patient", "full_dates", "modified_dates",
           "clean_descriptors", "clean_structured", "clean_graphics")

# tag: (attribute name, Basic Profile action, {{option: action}})
'''


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.stdout.write(build(Path(sys.argv[1])))
