"""synthpacs.v1: stubs generated from ``synthesizer.proto`` beside them (``make proto`` regenerates them;
tests/inference/test_proto.py fails when they are stale).

    from synthpacs.v1 import synthesizer_pb2 as pb, synthesizer_pb2_grpc as pb_grpc
"""
