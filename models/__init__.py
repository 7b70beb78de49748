"""synthpacs' machine learning: generators, discriminators, training, metrics, and the model registry.

This package works on tensors, arrays and files only. It never imports ``service``, pydicom,
pynetdicom or grpc, so a researcher can use it alone.
"""
