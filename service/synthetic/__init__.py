"""Synthetic studies, outbound: generated pixels become DICOM and go back to the PACS.

- :mod:`.sc_writer`: one synthetic Secondary Capture instance (PS3.3 A.8), its provenance and label
- :mod:`.studies`: a study of such instances from a generator, stored and queued (gRPC GenerateStudy and
  ``synthpacs synthesize`` share it)
- :mod:`.outbox`: the durable send queue and its sender (C-STORE through :mod:`service.dicom.scu`)
"""
