"""The seed range every part of synthpacs accepts: a seed is an unsigned 32-bit integer.

It is numpy's ``RandomState`` range (:func:`models.sampling.latent` seeds one with it) and the width of
the seed fields of the gRPC API and of a synthetic instance's provenance. Kept apart from
:mod:`models.sampling` so code that only checks seeds (the SC writer, the command line) loads no PyTorch.
"""

MAX_SEED = 2**32 - 1
