"""StyleGAN3 (Karras et al. 2021, "Alias-Free Generative Adversarial Networks", arXiv 2106.12423),
configs T and R, in plain PyTorch: no custom CUDA or C++ extension, nothing compiled at first run.

- :mod:`.filters`: Kaiser/jinc low-pass design, up/down-sampling, the filtered leaky ReLU
- :mod:`.synthesis`, :mod:`.mapping`, :mod:`.generator`: the generator
- :mod:`.discriminator`: StyleGAN2's residual discriminator
- :mod:`.ada`: adaptive discriminator augmentation (Karras et al. 2020) for grayscale radiographs
- :mod:`.losses`: non-saturating logistic loss, lazy R1, config R's blur of D's input
- :mod:`.recipe`: the training recipe for the shared runner (``synthpacs train --arch stylegan3-t|r``)
"""

from models.stylegan3.generator import Generator
from models.stylegan3.discriminator import Discriminator

__all__ = ["Generator", "Discriminator"]
