"""The mapping network z -> w (StyleGAN, Karras et al. 2019 §2; StyleGAN3 Appendix F: two layers).

z is normalized by its second moment, passed through ``num_layers`` fully connected layers with leaky
ReLU and a 0.01 learning-rate multiplier, and broadcast to every synthesis layer. A running mean of w
(``w_avg``, EMA with beta 0.998) is the centre of the truncation trick (StyleGAN §3.3 and Brock et al.
2019): w' = w_avg + psi (w - w_avg), applied to the first ``truncation_cutoff`` layers (all by default).
"""

from __future__ import annotations

import torch
from torch import nn

from models.stylegan3.layers import FullyConnected, normalize_2nd_moment


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 2, lr_multiplier: float = 0.01, w_avg_beta: float = 0.998):
        super().__init__()
        if num_layers < 1:
            raise ValueError("the mapping network needs at least one layer")
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(dims[i], dims[i + 1], activation="lrelu", lr_multiplier=lr_multiplier) for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, psi: float = 1.0, truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """(N, z_dim) -> (N, num_ws, w_dim)."""
        x = normalize_2nd_moment(z.to(torch.float32))
        for layer in self.layers:
            x = layer(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cut] = self.w_avg.to(ws.dtype).lerp(ws[:, :cut], psi)
        return ws
