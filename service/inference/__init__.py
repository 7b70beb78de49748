"""The gRPC inference service (``synthpacs.v1.Synthesizer``, proto/synthpacs/v1/synthesizer.proto).

One job per module:

- ``cache``: model versions from the registry, loaded on demand or at start, a bounded number in memory,
  new versions picked up without a restart;
- ``calibrate``: the forward sizes that keep every image bit-identical whatever its batch, and the
  half-precision check;
- ``batcher``: the dynamic batcher (many clients' images in one forward pass);
- ``validate`` and ``encode``: request checks, PNG / raw / synthetic DICOM encodings;
- ``servicer``: the RPCs; ``auth``: bearer tokens; ``metrics``: Prometheus; ``device``: CPU or GPU;
- ``server``: gRPC server with health, reflection and TLS; ``client``: the Python client.
"""
