"""synthpacs: realistic synthetic bone radiographs made inside the hospital network.

The running system: the archive (``service.archive``: store, index, de-identification, query engine), the
DIMSE side (``service.dicom``: SCP, Query/Retrieve, SCU, and its receive fast path), DICOMweb
(``service.dicomweb``), synthetic studies and the outbox (``service.synthetic``), datasets
(``service.data``), the gRPC inference service (``service.inference``), the CLI, configuration, logs and
metrics (ARCHITECTURE.md).
Machine learning lives in the separate ``models`` package, which never imports this one.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("synthpacs")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
