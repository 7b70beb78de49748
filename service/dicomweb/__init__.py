"""DICOMweb (PS3.18) over the store the DICOM SCP fills: QIDO-RS, WADO-RS, STOW-RS and capabilities.

One module per service (:mod:`.qido`, :mod:`.wado`, :mod:`.rendered`, :mod:`.stow`, :mod:`.capabilities`),
the HTTP plumbing beside them (:mod:`.media` for Accept and multipart bodies, :mod:`.dicomjson` for the
JSON model of PS3.18 Annex F, :mod:`.security` for tokens, binding and CORS, :mod:`.metrics`), the
Starlette application in :mod:`.app` and the component that serves it with uvicorn in :mod:`.server`.
"""
