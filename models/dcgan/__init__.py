"""DCGAN (Radford et al. 2016, arXiv 1511.06434) for grayscale radiographs: the networks and their
training recipe, one folder as :mod:`models.stylegan3`.

- :mod:`.networks`: the generator and discriminator (conditional and spectrally normalized variants)
- :mod:`.diffaugment`: DiffAugment of D's inputs (Zhao et al. 2020)
- :mod:`.recipe`: the training recipe for the shared runner (``synthpacs train --arch dcgan``)
"""

from models.dcgan.networks import Discriminator, Generator, UnsupportedResolution, check_resolution, init_weights

__all__ = ["Generator", "Discriminator", "UnsupportedResolution", "check_resolution", "init_weights"]
