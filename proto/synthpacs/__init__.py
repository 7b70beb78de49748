"""The public synthpacs gRPC API; the generated stubs live in :mod:`synthpacs.v1`."""
