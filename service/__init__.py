"""synthpacs: realistic synthetic bone radiographs made inside the hospital network.

The running system: DICOM ingest and Query/Retrieve (``service.dicom``), datasets (``service.data``),
the gRPC inference service (``service.inference``), the CLI, configuration, logs and metrics.
Machine learning lives in the separate ``models`` package, which never imports this one.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("synthpacs")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
