"""StyleGAN3's training objective (Karras et al. 2021, Appendix D; StyleGAN2, Karras et al. 2020, §B).

- Non-saturating logistic loss (Goodfellow et al. 2014): G minimizes softplus(-D(G(z))), D minimizes
  softplus(D(G(z))) + softplus(-D(x)).
- R1 regularization (Mescheder et al. 2018, Eq. 9): gamma / 2 * E ||grad_x D(x)||^2 on reals, computed
  lazily every ``r1_interval`` minibatches and scaled up by that interval (StyleGAN2 §3.1); the
  optimizer's learning rate and betas are adjusted for the extra steps (see :func:`lazy_adam_params`).
- Config R blurs every image D sees with a Gaussian whose sigma fades linearly from ``blur_init_sigma``
  pixels to 0 over ``blur_fade_kimg`` (StyleGAN3 Appendix D: stabilizes the start of training). The
  kernel is NVlabs' exp2(-(x / sigma)^2) over |x| <= floor(3 sigma): a Gaussian of standard deviation
  sigma / sqrt(2 ln 2) = 0.85 sigma (8.5 px at the published sigma of 10), so ``blur_sigma=10`` here
  blurs as NVlabs' ``--blur-sigma`` does.
- Images pass through ADA (:mod:`models.stylegan3.ada`) after the blur and before D, reals and fakes alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.stylegan3.filters import filter2d


def lazy_adam_params(lr: float, betas: tuple[float, float], interval: int | None) -> tuple[float, tuple[float, float]]:
    """Learning rate and betas for an optimizer that also takes a regularization step every
    ``interval`` minibatches, so that its effective schedule matches the unregularized one
    (StyleGAN2 §3.1, "lazy regularization": ratio = interval / (interval + 1))."""
    if not interval:
        return lr, betas
    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


def blur_sigma(cur_nimg: int, init_sigma: float, fade_kimg: float) -> float:
    """Sigma of config R's input blur after ``cur_nimg`` images: linear fade to zero."""
    if init_sigma <= 0 or fade_kimg <= 0:
        return 0.0
    return max(1.0 - cur_nimg / (fade_kimg * 1000), 0.0) * init_sigma


def blur_kernel(sigma: float) -> torch.Tensor | None:
    """exp2(-(x / sigma)^2) for integer |x| <= floor(3 sigma), normalized; None when that is one tap.

    As a Gaussian exp(-x^2 / (2 s^2)) this has s = sigma / sqrt(2 ln 2), about 0.85 sigma."""
    half = math.floor(sigma * 3) if sigma > 0 else 0
    if half <= 0:
        return None
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    f = torch.exp2(-(x / sigma).square())
    return (f / f.sum()).float()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    f = blur_kernel(sigma)
    return images if f is None else filter2d(images, f.to(images.device))


class StyleGAN3Loss:
    """The three loss terms, given G, D and (optionally) an augmentation pipe.

    ``G`` is called as ``G(z, update_emas=..., clamp=False)``; ``D(images)`` returns (N, 1) logits.
    """

    def __init__(self, G, D, augment=None, r1_gamma: float = 2.0, blur_init_sigma: float = 0.0, blur_fade_kimg: float = 0.0):
        if r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0, got {r1_gamma}")
        self.G, self.D, self.augment = G, D, augment
        self.r1_gamma, self.blur_init_sigma, self.blur_fade_kimg = r1_gamma, blur_init_sigma, blur_fade_kimg

    def run_D(self, images: torch.Tensor, cur_nimg: int) -> torch.Tensor:
        sigma = blur_sigma(cur_nimg, self.blur_init_sigma, self.blur_fade_kimg)
        if sigma > 0:
            images = blur(images, sigma)
        if self.augment is not None:
            images = self.augment(images)
        return self.D(images)

    def generator_loss(self, z: torch.Tensor, cur_nimg: int) -> torch.Tensor:
        fake = self.G(z, clamp=False)
        return F.softplus(-self.run_D(fake, cur_nimg)).mean()

    def discriminator_loss(self, reals: torch.Tensor, z: torch.Tensor, cur_nimg: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on fakes and reals; returns (loss, real logits) - the logits feed ADA's heuristic."""
        with torch.no_grad():
            fake = self.G(z, update_emas=True, clamp=False)
        fake_logits = self.run_D(fake, cur_nimg)
        real_logits = self.run_D(reals, cur_nimg)
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        return loss, real_logits.detach()

    def r1_loss(self, reals: torch.Tensor, cur_nimg: int) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma / 2 * mean ||grad D(x)||^2 (not yet multiplied by the lazy interval); returns
        (loss, per-image squared gradient norms)."""
        reals = reals.detach().requires_grad_(True)
        logits = self.run_D(reals, cur_nimg)
        (grad,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3])
        # logits * 0 keeps every D parameter in the graph, which DDP's reducer expects.
        return (penalty * (self.r1_gamma / 2)).mean() + logits.mean() * 0, penalty.detach()
