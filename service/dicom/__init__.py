"""The DIMSE side (PS3.7, PS3.8): the SCP and its Query/Retrieve handlers, the SCU (C-ECHO, C-STORE), TLS.

- :mod:`.scp`: the listener and its storage handlers, over :mod:`service.archive.store`
- :mod:`.qr`: C-FIND / C-MOVE / C-GET handlers, thin over :mod:`service.archive.query`
- :mod:`.scu`: outgoing associations (C-STORE with transfer-syntax fallback); :mod:`.echo`: C-ECHO
- :mod:`.tls`: DICOM TLS contexts (PS3.15 Annex B)
- :mod:`.fastpath`: the receive path that replaces parts of pynetdicom (one switch turns it off), and the
  front door: what a connection may cost before it is an association (admission limits)
"""
