"""Tiny StyleGAN3 networks for the tests: the real schedule and code paths, a few channels wide.

The tests run torch on one thread: on a CPU shared with other jobs, two OpenMP threads waiting for
each other made small operations up to 80 times slower (measured on the development machine).
"""

from __future__ import annotations

import pytest
import torch

from models.stylegan3 import Discriminator, Generator

# Channel base/max per config: T is 3x3 and R 1x1 with twice the channels, as in the paper.
TINY = {"t": dict(channel_base=1024, channel_max=16), "r": dict(channel_base=2048, channel_max=32)}
Z = 16


def tiny_generator(resolution: int = 64, config: str = "t", **kw) -> Generator:
    args = dict(z_dim=Z, w_dim=Z, resolution=resolution, config=config, **TINY.get(config, TINY["t"]))
    args.update(kw)
    return Generator(**args)


def tiny_discriminator(resolution: int = 64, channels: int = 1) -> Discriminator:
    return Discriminator(resolution, channels, channel_base=256, channel_max=16)


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
