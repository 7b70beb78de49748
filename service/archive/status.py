"""DICOM status codes that synthpacs answers, with where the standard defines them."""

SUCCESS = 0x0000
"""Success (PS3.7 Annex C.1.1)."""

PENDING = 0xFF00
"""Pending: matches are continuing (PS3.4 C.4.1.1.4, C-FIND/C-GET/C-MOVE)."""

CANCEL = 0xFE00
"""Cancel: sub-operations terminated due to Cancel indication (PS3.4 C.4.1.1.4)."""

DUPLICATE_SOP_INSTANCE = 0x0111
"""Failure: Duplicate SOP Instance (PS3.7 Annex C.5.7)."""

OUT_OF_RESOURCES = 0xA700
"""Failure: Refused, out of resources (PS3.4 Table B.2-1, C-STORE)."""

DATASET_MISMATCH = 0xA900
"""Failure: Error, Data Set does not match SOP Class (PS3.4 Table B.2-1)."""

CANNOT_UNDERSTAND = 0xC000
"""Failure: Error, cannot understand (PS3.4 Table B.2-1; 0xC000-0xCFFF)."""

QR_OUT_OF_RESOURCES = 0xA700
"""C-FIND: Refused, out of resources (PS3.4 Table C.4-1)."""

QR_UNABLE_TO_CALCULATE_MATCHES = 0xA701
"""C-MOVE/C-GET: Refused, out of resources, unable to calculate number of matches (PS3.4 C.4-2)."""

QR_UNABLE_TO_PERFORM_SUBOPS = 0xA702
"""C-MOVE/C-GET: Refused, out of resources, unable to perform sub-operations (PS3.4 C.4-2)."""

QR_MOVE_DESTINATION_UNKNOWN = 0xA801
"""C-MOVE: Refused, move destination unknown (PS3.4 Table C.4-2)."""

QR_IDENTIFIER_MISMATCH = 0xA900
"""C-FIND/C-MOVE/C-GET: Error, identifier does not match SOP class (PS3.4 Table C.4-1)."""

QR_UNABLE_TO_PROCESS = 0xC000
"""C-FIND/C-MOVE/C-GET: Failed, unable to process (PS3.4 Table C.4-1)."""

SUBOPS_WARNING = 0xB000
"""C-MOVE/C-GET: Warning, sub-operations complete with one or more failures (PS3.4 Table C.4-2)."""
